//! The fuzz targets' bodies, one module per target (`fuzz_targets/<name>.rs` hands libFuzzer's input to
//! `<name>::run`). Kept in a library so that `tests/corpus.rs` replays the committed corpora through the very same
//! functions as plain unit tests (no libFuzzer, no sanitizer): that is what CI runs (`make fuzz-smoke`).
//!
//! Each `run` panics on a broken property or a disagreement with its oracle (a well-kept library that defines the
//! truth: `serde_json`, `url`, `x509-parser`, `prost`); every deliberate difference is written where it is allowed.

// Fuzz code states its properties with assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod assertion;
pub mod audit_log;
pub mod authority;
pub mod certificate;
pub mod cidr;
pub mod decision;
pub mod json;
pub mod otlp;
pub mod path;
pub mod policy;
pub mod records;
pub mod redirect;
pub mod xfcc;

/// A target's body: panics when a property or an oracle fails for `data`.
pub type Run = fn(&[u8]);

/// Every target, by name, for the corpus replay.
pub const TARGETS: &[(&str, Run)] = &[
    ("assertion", assertion::run),
    ("audit_log", audit_log::run),
    ("authority", authority::run),
    ("certificate", certificate::run),
    ("cidr", cidr::run),
    ("decision", decision::run),
    ("json", json::run),
    ("otlp", otlp::run),
    ("path", path::run),
    ("policy", policy::run),
    ("records", records::run),
    ("redirect", redirect::run),
    ("xfcc", xfcc::run),
];

/// The input as text; most parsers take `&str` (their callers hold header values or configuration strings).
pub(crate) fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The first byte (a selector for the input's mode) and the rest.
pub(crate) fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}

/// Whether a `serde_json` value holds a number that is not an integer (the filters' reader refuses them all).
/// Whether `json` (which `serde_json` reads) holds a float anywhere, members a later duplicate key replaces included:
/// `serde_json::Value` keeps the last of repeated keys, where our reader judges every value it reads.
pub(crate) fn has_float_anywhere(json: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Floats;
    impl<'de> DeserializeSeed<'de> for Floats {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
            deserializer.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Floats {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<bool, A::Error> {
            let mut found = false;
            while let Some(float) = items.next_element_seed(Floats)? {
                found |= float;
            }
            Ok(found)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<bool, A::Error> {
            let mut found = false;
            while members.next_key::<IgnoredAny>()?.is_some() {
                found |= members.next_value_seed(Floats)?;
            }
            Ok(found)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    Floats.deserialize(&mut deserializer).unwrap_or(false)
}

pub(crate) fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(members) => members.values().any(has_float),
        _ => false,
    }
}
