//! JSON in the Wasm modules, kept small: one pull parser, one `serde` deserializer that knows the field path of
//! every value it hands out (so each configuration error names where it is, `rules[2].hosts[0]: …`), readers for
//! the documents the modules read by hand, and a writer for the small objects the filters reply with and publish.
//!
//! Why not `serde_json` + `serde_path_to_error`: every `Deserialize` type was instantiated for `serde_json`'s
//! deserializer and again for the path-tracking wrapper around it, and error messages pulled in float formatting;
//! together more than 100 KB of each module. Here one non-generic parser ([`Reader`]) reads every document: the
//! policy member by member as it streams in (`crate::documents`, so a large one is compiled rule by rule and never
//! whole in memory), the small ones into a tree that the derived visitors read through one deserializer.
//!
//! Configurations hold integers only: a number with a fraction or an exponent (or out of the 64-bit range, or `-0`:
//! the numbers `serde_json` reads as floats) is refused as a `floating point` value wherever it appears, without ever
//! being converted to a float.
//!
//! By job: `read` parses (the pull [`Reader`], and the readers the modules use instead of `serde` over it), `tree`
//! is a document parsed whole, `de` hands a tree to `serde` with every value's path, `error` is what reading and
//! deserializing report, `write` writes. Below all of them, [`crate::config_error`].

mod de;
mod error;
mod read;
mod tree;
mod write;

pub(crate) use de::De;
use error::config_error;
pub use error::Error;
pub(crate) use error::Path;
pub(crate) use read::{parse, read, require};
pub(crate) use read::{Reader, Source};
pub(crate) use tree::Value;
pub use write::{push_string, Object};

use crate::config_error::ConfigErrors;
use serde::de::DeserializeOwned;

/// Parses a JSON document into `T`. Every error comes back with its field path (the document root is
/// `(document)`): a syntax error alone, else every member in error ([`deserialize_at`]).
pub fn from_slice<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConfigErrors> {
    let value = parse(json).map_err(config_errors)?;
    deserialize_at(value, &Path::Root).map_err(|errors| ConfigErrors(errors.into_iter().map(config_error).collect()))
}

/// [`from_slice`] for text.
pub fn from_str<T: DeserializeOwned>(json: &str) -> Result<T, ConfigErrors> {
    from_slice(json.as_bytes())
}

/// Deserializes a value already read into a tree (a document, or a section of a larger one at `path`), reporting
/// every member in error, not only the first a derived visitor meets (which then gives up): the member an error lies
/// in (the innermost object member on its path) is set aside and the rest deserialized again, until the rest fits or
/// an error lies in no member (the value itself, or a whole list's element: its list is set aside, so one error per
/// list). Errors come in the order the visitors meet them, the first as a single pass would report it. A missing
/// field is reported only as the first error, as the policy's reader does (after another, it may be the member set
/// aside): later, the struct that misses it is set aside in turn.
pub(crate) fn deserialize_at<T: DeserializeOwned>(mut value: Value, path: &Path<'_>) -> Result<T, Vec<Error>> {
    let mut errors: Vec<Error> = Vec::new();
    loop {
        let error = match T::deserialize(De { value: &value, path: *path }) {
            Ok(value) if errors.is_empty() => return Ok(value),
            Ok(_) => return Err(errors),
            Err(error) => error,
        };
        // Each round removes a member, so this ends.
        let removed = value.remove_innermost_member(error.position());
        if errors.is_empty() || !error.is_missing_field() {
            errors.push(error);
        }
        if !removed {
            return Err(errors);
        }
    }
}

fn config_errors(error: Error) -> ConfigErrors {
    ConfigErrors(vec![config_error(error)])
}

#[cfg(test)]
mod tests {
    use super::read::*;
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Doc {
        name: String,
        #[serde(default)]
        ports: Option<Vec<u16>>,
        #[serde(default)]
        inner: Vec<Inner>,
        #[serde(default)]
        kind: Kind,
        #[serde(default)]
        pair: Option<[String; 2]>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        offset: i64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        hosts: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        #[default]
        Plain,
        Fancy,
    }

    fn error(json: &str) -> String {
        match from_str::<Doc>(json) {
            Ok(doc) => panic!("accepted {doc:?}"),
            Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        }
    }

    #[test]
    fn parses_every_json_form() {
        let doc: Doc = from_str(
            " {\"name\" : \"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00é\", \"ports\":[1, 65535],\n\
             \"inner\":[{\"hosts\":[]}], \"kind\":\"fancy\", \"pair\":[\"x\",\"y\"], \"labels\":{\"k\":\"v\"},\
             \"flag\":true, \"offset\":-12} ",
        )
        .unwrap();
        assert_eq!(doc.name, "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}é");
        assert_eq!(doc.ports, Some(vec![1, 65535]));
        assert_eq!(doc.inner, [Inner { hosts: vec![] }]);
        assert_eq!(doc.kind, Kind::Fancy);
        assert_eq!(doc.pair, Some(["x".to_string(), "y".to_string()]));
        assert_eq!(doc.labels.get("k").map(String::as_str), Some("v"));
        assert!(doc.flag);
        assert_eq!(doc.offset, -12);
        let doc: Doc = from_str(r#"{"name":"b","ports":null}"#).unwrap();
        assert_eq!((doc.ports, doc.kind), (None, Kind::Plain));
    }

    #[test]
    fn errors_name_the_field_path() {
        assert_eq!(error(r#"{"name":"a","portz":[1]}"#), "portz: unknown field `portz`, expected one of `name`, `ports`, `inner`, `kind`, `pair`, `labels`, `flag`, `offset`");
        assert_eq!(error(r#"{"name":"a","ports":[1,"2"]}"#), r#"ports[1]: invalid type: string "2", expected u16"#);
        assert_eq!(error(r#"{"name":"a","ports":[70000]}"#), "ports[0]: invalid value: integer `70000`, expected u16");
        assert_eq!(
            error(r#"{"name":"a","ports":[1.5]}"#),
            "ports[0]: invalid type: floating point `1.5`, expected u16"
        );
        assert_eq!(error(r#"{"name":"a","offset":1e3}"#), "offset: invalid type: floating point `1e3`, expected i64");
        assert_eq!(
            error(r#"{"name":"a","offset":99999999999999999999}"#),
            "offset: invalid type: floating point `99999999999999999999`, expected i64"
        );
        assert_eq!(
            error(r#"{"name":"a","inner":[{"hosts":["x"]},{"hosts":[null]}]}"#),
            "inner[1].hosts[0]: invalid type: null, expected a string"
        );
        assert_eq!(error(r#"{"name":"a","inner":[{}]}"#), "inner[0]: missing field `hosts`");
        assert_eq!(error(r#"{"name":"a","kind":"odd"}"#), "kind: unknown variant `odd`, expected `plain` or `fancy`");
        assert_eq!(error(r#"{"name":"a","kind":7}"#), "kind: invalid type: integer `7`, expected enum Kind");
        assert_eq!(error(r#"{"name":"a","pair":["x"]}"#), "pair: invalid length 1, expected an array of length 2");
        assert_eq!(
            error(r#"{"name":"a","pair":["x","y","z"]}"#),
            "pair: invalid length 3, expected fewer elements in sequence"
        );
        assert_eq!(error(r#"{"name":"a","flag":"yes"}"#), r#"flag: invalid type: string "yes", expected a boolean"#);
        assert_eq!(error(r#"{"name":"a","name":"b"}"#), "(document): duplicate field `name`");
        assert_eq!(error(r#"{}"#), "(document): missing field `name`");
        assert_eq!(error(r#"[]"#), "(document): invalid type: sequence, expected struct Doc", "no structs as arrays");
        assert_eq!(error(r#"{"name":{}}"#), "name: invalid type: map, expected a string");
        assert_eq!(error(r#"{"name":"a","ports":{"a":1}}"#), "ports: invalid type: map, expected a sequence");
        assert_eq!(error(r#"{"name":"a","labels":{"k":1}}"#), "labels.k: invalid type: integer `1`, expected a string");
        assert_eq!(error(r#"{"name":"a","flag":1.0}"#), "flag: invalid type: floating point `1.0`, expected a boolean");
        assert_eq!(error(r#""x""#), r#"(document): invalid type: string "x", expected struct Doc"#);
    }

    #[test]
    fn syntax_errors_are_located() {
        let cases = [
            ("", "EOF while parsing a value at line 1 column 0"),
            ("{\"name\":\"a\",}", "trailing comma at line 1 column 13"),
            ("[1,]", "trailing comma at line 1 column 4"),
            ("{\"name\":\"a\"} x", "trailing characters at line 1 column 14"),
            ("{\n\"name\" \"a\"}", "expected `:` at line 2 column 8"),
            ("{\"name\":\"a\"", "EOF while parsing an object at line 1 column 11"),
            ("{\"name\":[1 2]}", "expected `,` or `]` at line 1 column 12"),
            (
                "{\"name\":\"\u{1}\"}",
                "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 10",
            ),
            ("{\"name\":\"\\x\"}", "invalid escape at line 1 column 11"),
            ("{\"name\":\"\\ud800\"}", "unexpected end of hex escape at line 1 column 16"),
            ("{\"name\":\"\\udc00\"}", "lone leading surrogate in hex escape at line 1 column 15"),
            ("{\"name\":01}", "invalid number at line 1 column 10"),
            ("{\"name\":-}", "invalid number at line 1 column 10"),
            ("{\"name\":1.}", "invalid number at line 1 column 11"),
            ("{\"name\":tru}", "expected ident at line 1 column 12"),
            ("{name:1}", "key must be a string at line 1 column 2"),
            // Found by fuzzing against `serde_json`: its words for a document that ends inside `[` or after a comma.
            ("[", "EOF while parsing a list at line 1 column 1"),
            ("[ \n ", "EOF while parsing a list at line 2 column 1"),
            ("[1,", "EOF while parsing a value at line 1 column 3"),
            ("{\"name\":\"a\", ", "EOF while parsing a value at line 1 column 13"),
            ("{", "EOF while parsing an object at line 1 column 1"),
            ("{\"name\"", "EOF while parsing an object at line 1 column 7"),
            ("{\"name\":}", "expected value at line 1 column 9"),
            ("x", "expected value at line 1 column 1"),
            // All four hex digits of an escape are read before they are checked.
            ("{\"name\":\"\\u0x41\"}", "invalid escape at line 1 column 15"),
            ("{\"name\":\"\\ud83d\\u0ud8\"}", "invalid escape at line 1 column 21"),
            ("{\"name\":\"\\u0x", "EOF while parsing a string at line 1 column 13"),
            // A surrogate pair cut short by the end of the document.
            ("{\"name\":\"\\ud800", "EOF while parsing a string at line 1 column 15"),
            ("{\"name\":\"\\ud800\\", "EOF while parsing a string at line 1 column 16"),
            ("{\"name\":\"\\ud800x", "unexpected end of hex escape at line 1 column 16"),
            // A number cut short by the end of the document.
            ("-", "EOF while parsing a value at line 1 column 1"),
            ("[-", "EOF while parsing a value at line 1 column 2"),
            ("1.", "EOF while parsing a value at line 1 column 2"),
            ("1e", "EOF while parsing a value at line 1 column 2"),
            ("1e+", "EOF while parsing a value at line 1 column 3"),
        ];
        // Found by fuzzing: a byte that is not UTF-8 is placed where it is, as `serde_json` places it.
        for (json, want) in [
            (&b"\"\x91x\""[..], 2),
            (b"\"ab\xe2\x82x\"", 4),
            (b"\"a\\nb\xe2\x82\xacc\xff\"", 10),
            (b"[\"\xf0\x9f\x98\"]", 3),
            (b"{\"a\x80\":1}", 4),
        ] {
            let ours = from_slice::<serde_json::Value>(json).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<serde_json::Value>(json).map_err(|e| format!("(document): {e}"));
            assert_eq!(ours, theirs);
            assert_eq!(ours, Err(format!("(document): invalid unicode code point at line 1 column {want}")));
        }
        for (json, want) in cases {
            assert_eq!(error(json), format!("(document): {want}"), "{json:?}");
        }
        assert_eq!(error(&"[".repeat(200)), "(document): recursion limit exceeded at line 1 column 128");
        assert!(
            matches!(from_slice::<Doc>(b"{\"name\":\"\xff\"}"), Err(ConfigErrors(e)) if e[0].message == "invalid unicode code point at line 1 column 10")
        );
    }

    /// Found by fuzzing against `serde_json` (`fuzz/`, target `json`): the reader nested one level deeper than
    /// `serde_json` (128 levels, although its limit was meant to be `serde_json`'s), and read `-0` as the integer 0
    /// where `serde_json` reads the float -0.0. Now both refuse the 128th level at the same place, and `-0` is a
    /// float, refused wherever floats are (every configuration field, every record).
    #[test]
    fn nests_as_deep_as_serde_json_and_reads_minus_zero_as_a_float() {
        let nested = |depth: usize, open: &str, close: &str| format!("{}{}", open.repeat(depth), close.repeat(depth));
        for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("[{\"a\":", "}]")] {
            for depth in [1, 63, 64, 126, 127, 128, 129, 200] {
                // An innermost `{"a":}` is no object: make it `{}` (or `[{}]`).
                let json = nested(depth, open, close).replacen("{\"a\":}", "{}", 1);
                let ours = from_str::<serde_json::Value>(&json).map_err(|e| e.to_string());
                let theirs = serde_json::from_str::<serde_json::Value>(&json).map_err(|e| format!("(document): {e}"));
                assert_eq!(ours, theirs, "{json}");
            }
        }
        assert!(from_str::<serde::de::IgnoredAny>(&nested(127, "[", "]")).is_ok());
        let too_deep = "(document): recursion limit exceeded at line 1 column 128";
        let deep = nested(128, "[", "]");
        assert_eq!(
            from_str::<serde::de::IgnoredAny>(&deep).map_err(|e| e.to_string()).err().as_deref(),
            Some(too_deep)
        );
        // The readers without serde (the policy, the filter-state records) share the limit.
        let by_hand = read(&mut deep.as_bytes(), |reader, path| reader.list(path, |reader, _| reader.tree().map(drop)));
        assert_eq!(by_hand.map_err(|e| e.to_string()).err().as_deref(), Some(too_deep));

        assert!(serde_json::from_str::<serde_json::Value>("-0").is_ok_and(|v| v.is_f64()), "a float to serde_json");
        assert_eq!(error(r#"{"name":"a","offset":-0}"#), "offset: invalid type: floating point `-0`, expected i64");
        assert_eq!(error(r#"{"name":"a","ports":[-0]}"#), "ports[0]: invalid type: floating point `-0`, expected u16");
        let value = from_str::<serde_json::Value>("[-0]").map_err(|e| e.to_string());
        assert_eq!(
            value.err().as_deref(),
            Some("[0]: invalid type: floating point `-0`, expected any valid JSON value")
        );
        let by_hand = read(&mut "-0".as_bytes(), |reader, path| reader.int(path)).map_err(|e| e.to_string());
        assert_eq!(by_hand.err().as_deref(), Some("(document): invalid type: floating point `-0`, expected i64"));
        // Other zeros and negatives are integers still.
        for (json, want) in [("0", 0), ("-1", -1), ("-10", -10), ("-9223372036854775808", i64::MIN)] {
            assert_eq!(from_str::<i64>(json).ok(), Some(want), "{json}");
            assert_eq!(read(&mut json.as_bytes(), |reader, path| reader.int(path)).ok(), Some(want), "{json}");
        }
        assert!(from_str::<i64>("-0.0").is_err() && from_str::<i64>("-0e0").is_err());
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let tricky = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}/é😀";
        let mut out = String::new();
        push_string(&mut out, tricky);
        assert_eq!(out, serde_json::to_string(tricky).unwrap());
        let object = Object::new().str("s", tricky).opt_str("n", None).uint("u", u64::MAX).bool("b", true).finish();
        assert_eq!(
            object,
            format!(r#"{{"s":{},"n":null,"u":18446744073709551615,"b":true}}"#, serde_json::to_string(tricky).unwrap())
        );
        assert_eq!(Object::new().finish(), "{}");
    }
}
