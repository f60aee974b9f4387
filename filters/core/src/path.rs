//! Request paths as path-scoped rules judge them: one definition for requests, redirect targets and followed hops.
//!
//! A rule with `paths` is a promise about which resources a client may reach, and the resource is chosen by the
//! upstream's parser, not by ours. Servers disagree on paths: Tomcat and Spring drop `;` parameters before they
//! resolve dot segments (`/public/..;/private` is `/private` there), Windows servers trim trailing dots and spaces
//! from segments, some frameworks decode twice (`%252e`), IIS reads `%u002e`, some servers merge `//` and others do
//! not, and a decoder that does not check UTF-8 reads `%c0%ae` as `.`. So a path-scoped rule allows a path only when
//! every common server reads the same segments from it, and refuses it otherwise ([`Ambiguity`]), whatever the rule's
//! patterns say. Refused, at every level of percent-decoding (a path is decoded until no escape is left, at most
//! [`MAX_DECODINGS`] times):
//!
//! - a path that is not origin-form (`*`, empty, absolute), a fragment, a backslash, a control byte, any non-ASCII
//!   byte (raw or escaped: overlong UTF-8, fullwidth dots and slashes, Windows "best fit" characters);
//! - an empty segment (`//`) anywhere but at the end;
//! - a dot segment: a segment made of dots and trailing spaces (`.`, `..`, `...`, `.. `), also when a path
//!   parameter, or a `?` or `#` that a decoded level holds, follows it (`..;x`, `.%3f`);
//! - a parameter in a segment of its own (`/;x/`);
//! - an escaped `.`, `/`, `\` or `;` (`%2e`, `%2f`, `%5c`, `%3b`, any case), and `%u` escapes.
//!
//! What is left is matched in its RFC 3986 normal form (§6.2.2): escapes of unreserved characters decoded, the hex
//! digits of the others in upper case. So `/%70ublic/x` is `/public/x`, as any server reads it, whether or not the
//! gateway's HTTP connection manager normalised it first (Istio's default, `normalize_path`, does). The query (after
//! the first `?`) is never part of the path.

use std::borrow::Cow;
use std::fmt;

/// How many times a path is percent-decoded at most while looking for what a server that decodes again would see;
/// a path that still holds escapes after that is refused ([`Ambiguity::NestedEncoding`]).
pub const MAX_DECODINGS: usize = 3;

/// Why a path is refused by a path-scoped rule: servers would read it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    /// Not `/…`: `*`, empty, or absolute-form.
    NotOriginForm,
    Fragment,
    Backslash,
    ControlCharacter,
    NonAscii,
    /// `//` (servers merge adjacent slashes or not).
    EmptySegment,
    /// `.`, `..` and their spellings.
    DotSegment,
    /// `;` after a dot segment or in a segment of its own (Tomcat, Spring: `..;` is `..`).
    PathParameter,
    /// `%2e`, `%2f`, `%5c`, `%3b`: an escaped dot, slash, backslash or semicolon.
    EscapedSeparator,
    /// `%u002e` (IIS).
    UnicodeEscape,
    /// Still escaped after [`MAX_DECODINGS`] decodings.
    NestedEncoding,
}

impl Ambiguity {
    pub fn code(self) -> &'static str {
        match self {
            Ambiguity::NotOriginForm => "not_origin_form",
            Ambiguity::Fragment => "fragment",
            Ambiguity::Backslash => "backslash",
            Ambiguity::ControlCharacter => "control_character",
            Ambiguity::NonAscii => "non_ascii",
            Ambiguity::EmptySegment => "empty_segment",
            Ambiguity::DotSegment => "dot_segment",
            Ambiguity::PathParameter => "path_parameter",
            Ambiguity::EscapedSeparator => "escaped_separator",
            Ambiguity::UnicodeEscape => "unicode_escape",
            Ambiguity::NestedEncoding => "nested_encoding",
        }
    }
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The path of `:path` (or of a resolved `Location`), without its query.
pub fn without_query(path_and_query: &str) -> &str {
    path_and_query.split_once('?').map_or(path_and_query, |(path, _)| path)
}

/// The form path patterns are matched against (see the module documentation), or why there is none. `path` has no
/// query (see [`without_query`]). Allocates only when the path holds escapes.
pub fn normal_form(path: &str) -> Result<Cow<'_, str>, Ambiguity> {
    if !path.starts_with('/') {
        return Err(Ambiguity::NotOriginForm);
    }
    for byte in path.bytes() {
        match byte {
            b'#' => return Err(Ambiguity::Fragment),
            b'\\' => return Err(Ambiguity::Backslash),
            0..=0x1f | 0x7f => return Err(Ambiguity::ControlCharacter),
            0x80.. => return Err(Ambiguity::NonAscii),
            _ => {}
        }
    }
    check_segments(path, false)?;
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    // What a server that decodes (once, twice, …) reads. `decode` refuses the `%u` escapes of what it decodes; a
    // level with no `%XX` escape left is not decoded again, so its own are looked for here (`%u00%32e` is `%u002e`
    // once decoded).
    let mut level = decode(path)?;
    for _ in 1..MAX_DECODINGS {
        check_segments(&level, true)?;
        if !has_escape(&level) {
            check_unicode_escapes(&level)?;
            return Ok(Cow::Owned(normalise_escapes(path)));
        }
        level = decode(&level)?;
    }
    check_segments(&level, true)?;
    check_unicode_escapes(&level)?;
    if has_escape(&level) {
        return Err(Ambiguity::NestedEncoding);
    }
    Ok(Cow::Owned(normalise_escapes(path)))
}

/// The segment checks of one decoding level. In a decoded level a `?` or `#` is data to this server, but a
/// delimiter to one that decodes before it parses, so it ends a segment's head like `;` does.
fn check_segments(path: &str, decoded: bool) -> Result<(), Ambiguity> {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() {
            if last {
                return Ok(());
            }
            return Err(Ambiguity::EmptySegment);
        }
        let delimiters: &[char] = if decoded { &[';', '?', '#'] } else { &[';'] };
        let (head, parameters) = match segment.find(delimiters) {
            Some(at) => (&segment[..at], true),
            None => (segment, false),
        };
        if is_dot_segment(head) {
            return Err(if parameters { Ambiguity::PathParameter } else { Ambiguity::DotSegment });
        }
        if head.is_empty() {
            return Err(Ambiguity::PathParameter);
        }
    }
    Ok(())
}

/// Dots, then nothing but spaces (Windows trims trailing dots and spaces: `...` and `.. ` are `..` there).
fn is_dot_segment(head: &str) -> bool {
    let dots = head.trim_end_matches(' ');
    !dots.is_empty() && dots.bytes().all(|b| b == b'.')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The escape at the start of `bytes` (`%` and two hex digits), decoded.
pub(crate) fn escape_at(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', high, low, ..] => Some(hex(*high)? << 4 | hex(*low)?),
        _ => None,
    }
}

fn has_escape(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| escape_at(w).is_some())
}

/// `%u` and four hex digits, which IIS decodes.
fn check_unicode_escapes(path: &str) -> Result<(), Ambiguity> {
    let unicode = |w: &[u8]| w[0] == b'%' && matches!(w[1], b'u' | b'U') && w[2..].iter().all(|&b| hex(b).is_some());
    if path.as_bytes().windows(6).any(unicode) {
        return Err(Ambiguity::UnicodeEscape);
    }
    Ok(())
}

/// One percent-decoding. An escape that decodes to a separator, a control byte or non-ASCII is refused here, at
/// whatever level it appears; a `%` that starts no escape stays as it is.
fn decode(path: &str) -> Result<String, Ambiguity> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let rest = bytes.get(i..).unwrap_or_default();
        match escape_at(rest) {
            Some(decoded) => {
                match decoded {
                    b'.' | b'/' | b'\\' | b';' => return Err(Ambiguity::EscapedSeparator),
                    0..=0x1f | 0x7f => return Err(Ambiguity::ControlCharacter),
                    0x80.. => return Err(Ambiguity::NonAscii),
                    _ => out.push(char::from(decoded)),
                }
                i += 3;
            }
            None => {
                if byte == b'%' && matches!(rest.get(1), Some(b'u' | b'U')) {
                    let digits = rest.get(2..6).unwrap_or_default();
                    if digits.len() == 4 && digits.iter().all(|&b| hex(b).is_some()) {
                        return Err(Ambiguity::UnicodeEscape);
                    }
                }
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §6.2.2: escapes of unreserved characters decoded, other escapes with upper-case hex digits. An escape
/// whose character would complete a new escape with the `%` before it (`%5%32` would be `%52`) stays escaped, so that
/// the normal form is its own normal form.
fn normalise_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let completes_escape = |out: &str, decoded: u8| {
            let out = out.as_bytes();
            hex(decoded).is_some()
                && (out.ends_with(b"%")
                    || (out.len() >= 2 && out[out.len() - 2] == b'%' && hex(out[out.len() - 1]).is_some()))
        };
        match escape_at(bytes.get(i..).unwrap_or_default()) {
            Some(decoded)
                if (decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded))
                    && !completes_escape(&out, decoded) =>
            {
                out.push(char::from(decoded));
                i += 3;
            }
            Some(decoded) => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(decoded >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(decoded & 0xf)]));
                i += 3;
            }
            None => {
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn refused(path: &str) -> Option<Ambiguity> {
        normal_form(path).err()
    }

    #[test]
    fn plain_paths_are_their_own_normal_form() {
        for path in ["/", "/public/x", "/public/", "/a/b.json", "/a/.well-known/x", "/a/...b", "/a/b..", "/x;v=1/y"] {
            assert_eq!(normal_form(path), Ok(Cow::Borrowed(path)), "{path}");
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_for_matching() {
        assert_eq!(normal_form("/%70ublic/%7e%41").as_deref(), Ok("/public/~A"));
        assert_eq!(normal_form("/a/%c3%a9").err(), Some(Ambiguity::NonAscii));
        assert_eq!(normal_form("/a/%3a%2b%25").as_deref(), Ok("/a/%3A%2B%25"), "reserved stay escaped, upper case");
        assert_eq!(normal_form("/a/100%").as_deref(), Ok("/a/100%"), "a lone % is data");
        assert_eq!(normal_form("/a/%zz").as_deref(), Ok("/a/%zz"));
        assert_eq!(normal_form("/a/%2").as_deref(), Ok("/a/%2"));
        assert_eq!(normal_form("/tags/c%23").as_deref(), Ok("/tags/c%23"), "an escaped # inside a name");
    }

    #[test]
    fn dot_segments_in_every_spelling() {
        let cases = [
            "/public/../private",
            "/public/./x",
            "/public/x/..",
            "/public/...",
            "/public/%2e%2e/private",
            "/public/%2E%2e/private",
            "/public/.%2e/private",
            "/public/%252e%252e/private",
            "/public/%25252e%25252e/private",
            "/public/%%32%65%%32%65/private",
            "/public/%u002e%u002e/private",
            "/public/..%20/private",
            "/public/..%3f/private",
            "/public/..%23/private",
            "/public/.. /private",
        ];
        for path in cases {
            assert!(
                matches!(
                    refused(path),
                    Some(
                        Ambiguity::DotSegment
                            | Ambiguity::EscapedSeparator
                            | Ambiguity::UnicodeEscape
                            | Ambiguity::PathParameter
                            | Ambiguity::NestedEncoding
                    )
                ),
                "{path}: {:?}",
                refused(path)
            );
        }
        assert_eq!(refused("/public/../private"), Some(Ambiguity::DotSegment));
        assert_eq!(refused("/public/%2e%2e/private"), Some(Ambiguity::EscapedSeparator));
        assert_eq!(refused("/public/%252e%252e/x"), Some(Ambiguity::EscapedSeparator), "decoded twice");
        assert_eq!(refused("/public/%u002e%u002e/x"), Some(Ambiguity::UnicodeEscape));
        assert_eq!(refused("/public/..%3f/x"), Some(Ambiguity::PathParameter), "a decoder that reparses");
        assert_eq!(refused("/p/%2525252e"), Some(Ambiguity::NestedEncoding));
    }

    /// Found by fuzzing (`fuzz/`, target `path`): a `%u` escape that only a decoding completes (`%u00%32e` is
    /// `%u002e` once decoded, `.` to IIS after that) was let through, in a normal form that is itself refused.
    #[test]
    fn unicode_escapes_completed_by_a_decoding_are_refused() {
        for path in [
            "/public/%u00%32e%u00%32e/secret",
            "/puibli0e%u00%32e/x",
            "/a/%25u002e",
            "/a/%%75002e",
            "/a/%u%30%30%32%65",
        ] {
            assert_eq!(refused(path), Some(Ambiguity::UnicodeEscape), "{path}");
        }
        assert_eq!(refused("/a/%u00%32"), None, "not four hex digits: no escape");
        assert_eq!(normal_form("/a/%u00%32").as_deref(), Ok("/a/%u002"));
    }

    /// Found by fuzzing (`fuzz/`, target `path`): decoding `%32` after `%5` made the escape `%52`, so the normal form
    /// of `/public/%5%32%65/x` (`/public/%52e/x`) had another normal form (`/public/Re/x`).
    #[test]
    fn the_normal_form_creates_no_escape() {
        for (path, normal) in [
            ("/public/%5%32%65/private", "/public/%5%32e/private"),
            ("/a/%%36%31", "/a/%%361"),
            ("/a/%%36%31%62", "/a/%%361b"),
            ("/a/%25%36%31", "/a/%2561"),
            ("/a/%5%47", "/a/%5G"),
            ("/,22.%3%3%325", "/,22.%3%3%325"),
        ] {
            assert_eq!(normal_form(path).as_deref(), Ok(normal), "{path}");
            assert_eq!(normal_form(normal).as_deref(), Ok(normal), "{normal} is its own normal form");
        }
    }

    #[test]
    fn path_parameters_cannot_hide_dot_segments() {
        for path in ["/public/..;/private/x", "/public/.;/x", "/public/..;jsessionid=1/x", "/public/;x/..;/y"] {
            assert_eq!(refused(path), Some(Ambiguity::PathParameter), "{path}");
        }
        assert_eq!(refused("/public/%2e%2e;/private/x"), Some(Ambiguity::EscapedSeparator));
        assert_eq!(refused("/public/..%3b/private"), Some(Ambiguity::EscapedSeparator));
        assert_eq!(refused("/public/;x/y"), Some(Ambiguity::PathParameter), "a parameter as a whole segment");
        assert_eq!(refused("/x;v=1/y"), None, "a parameter after a name is the same segment everywhere");
    }

    #[test]
    fn separators_controls_and_non_ascii() {
        let cases = [
            ("public", Ambiguity::NotOriginForm),
            ("*", Ambiguity::NotOriginForm),
            ("", Ambiguity::NotOriginForm),
            ("http://a/x", Ambiguity::NotOriginForm),
            ("/public//x", Ambiguity::EmptySegment),
            ("//evil.example/x", Ambiguity::EmptySegment),
            ("/public/a\\..\\b", Ambiguity::Backslash),
            ("/public/%5c..%5cb", Ambiguity::EscapedSeparator),
            ("/public/%5C", Ambiguity::EscapedSeparator),
            ("/public%2f..%2fprivate", Ambiguity::EscapedSeparator),
            ("/public/%2F", Ambiguity::EscapedSeparator),
            ("/public/x%3bjsessionid", Ambiguity::EscapedSeparator),
            ("/public/x#/../y", Ambiguity::Fragment),
            ("/public/%00x", Ambiguity::ControlCharacter),
            ("/public/%0a", Ambiguity::ControlCharacter),
            ("/public/%7f", Ambiguity::ControlCharacter),
            ("/public/\u{1}", Ambiguity::ControlCharacter),
            ("/public/caf\u{e9}", Ambiguity::NonAscii),
            ("/public/%c0%ae%c0%ae/x", Ambiguity::NonAscii),
            ("/public/%e0%80%ae/x", Ambiguity::NonAscii),
            ("/public/%ef%bc%8e%ef%bc%8e/x", Ambiguity::NonAscii),
            ("/public/%25c0%25ae/x", Ambiguity::NonAscii),
        ];
        for (path, want) in cases {
            assert_eq!(refused(path), Some(want), "{path:?}");
        }
    }

    #[test]
    fn the_query_is_not_the_path() {
        assert_eq!(without_query("/a/b?x=/../y"), "/a/b");
        assert_eq!(without_query("/a/b"), "/a/b");
        assert_eq!(normal_form(without_query("/public/x?../..;")), Ok(Cow::Borrowed("/public/x")));
    }
}
