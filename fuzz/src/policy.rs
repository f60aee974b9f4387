//! The configuration loaders (operator input): the policy, read by the hand-written streaming reader
//! (`PolicyDocument::from_json`; `Policy::from_json` and `Policy::from_reader` compile it rule by rule as it streams
//! in, every error with its field path), the suite's configuration (the policy as its `policy` section), and the
//! audit and identity configurations (derived `Deserialize` through the reader's path-tracking deserializer).
//!
//! Input: a selector byte, then a JSON document. The selector picks the loader (`% 4`: policy, suite, audit,
//! identity) and, for the policy, how many bytes the streaming reader is handed at a time (1 to 16).
//!
//! Oracles:
//! - the derived `Deserialize` of the document types, which the hand-written reader promises to match, run by our
//!   path-tracking deserializer (`json::from_slice`): the same document, or problems at the same field paths
//!   (the stream reports every problem of a document, the derived `Deserialize` its first; a syntax error comes
//!   first in a tree read whole, in document order in the stream);
//! - the same derived `Deserialize` run by `serde_json`: the same acceptance and the same document. Deliberate
//!   differences, where only we refuse: a struct written as a JSON array (`serde_json`'s derived visitors take one;
//!   nobody writes a configuration so, and ours would instantiate a sequence visitor per struct in every module),
//!   a unit variant written as a one-member object (`{"report":null}`, the same), and floats (`-0` included).
//!
//! Properties: each problem of a document read whole is reported once; the policy compiled from the stream is the
//! policy compiled from the document read whole, however the stream is cut, and a refused document compiles to nothing;
//! a document printed by `serde_json` reads back as the same document; the policy as the suite's `policy` section
//! compiles to the same policy, or fails with problems at the same paths under `policy`.

use egress_core::audit::AuditDocument;
use egress_core::identity::IdentityDocument;
use egress_core::json::from_slice;
use egress_core::suite::SuiteConfig;
use egress_core::{ConfigError, ConfigErrors, Policy, PolicyDocument};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Debug;
use std::io::BufReader;

pub fn run(data: &[u8]) {
    let (selector, json) = crate::selector(data);
    match selector % 4 {
        0 => policy(json, usize::from(selector >> 2) % 16 + 1),
        1 => suite(json),
        2 => document::<AuditDocument>(json),
        _ => document::<IdentityDocument>(json),
    }
}

fn policy(json: &[u8], chunk: usize) {
    let streamed = PolicyDocument::from_json(json);
    let derived = from_slice::<PolicyDocument>(json);
    each_reported_once(&derived);
    match (&streamed, &derived) {
        (Ok(_), Ok(_)) => assert_eq!(debug(&streamed), debug(&derived), "the streaming reader and the derived differ"),
        // The stream reports every problem, in document order (a syntax error ends it); the derived `Deserialize`
        // runs on a tree read whole, so a syntax error anywhere comes first, else its first problem. Only where is
        // compared (the stream's messages may say more than serde's).
        (Err(ConfigErrors(streamed)), Err(ConfigErrors(derived))) => {
            if !derived.iter().any(is_syntax) {
                for error in derived {
                    assert!(streamed.iter().any(|e| e.path == error.path), "{error} not among {streamed:?}");
                }
            }
        }
        _ => panic!("the streaming reader: {streamed:?}, the derived Deserialize: {derived:?}"),
    }
    against_serde_json(json, &streamed);

    let compiled = Policy::from_json(json);
    match &streamed {
        Ok(document) => assert_eq!(debug(&compiled), debug(&Policy::compile(document)), "compiled while streaming"),
        Err(_) => assert!(compiled.is_err(), "a document refused, compiled: {compiled:?}"),
    }
    let chunked = Policy::from_reader(BufReader::with_capacity(chunk, json));
    assert_eq!(debug(&chunked), debug(&compiled), "read {chunk} bytes at a time");

    if let Ok(document) = &streamed {
        let printed = serde_json::to_string(document).unwrap();
        let again = PolicyDocument::from_json(printed.as_bytes());
        assert_eq!(debug(&again), debug(&streamed), "printed as {printed}");
    }
}

/// The policy as the suite's `policy` section: the same policy, or problems at the same paths under `policy`.
fn suite(json: &[u8]) {
    let alone = Policy::from_json(json);
    let mut section = b"{\"policy\":".to_vec();
    section.extend_from_slice(json);
    section.push(b'}');
    let suite = SuiteConfig::from_json(&section, |_| None);
    match (&alone, &suite) {
        (Ok(alone), Ok(suite)) => {
            let policy = suite.policy.as_deref().expect("a policy section");
            assert_eq!(format!("{alone:?}"), format!("{policy:?}"));
        }
        (Err(ConfigErrors(alone)), Err(ConfigErrors(suite))) => {
            // A syntax error is placed differently (the section starts 10 bytes in), and text after the policy is
            // inside the suite's object: for what is not JSON, only that both are refused is compared.
            if serde_json::from_slice::<Value>(json).is_err() || alone.iter().any(is_syntax) {
                return;
            }
            let under = |path: &str| if path == "(document)" { "policy".into() } else { format!("policy.{path}") };
            let alone: Vec<String> = alone.iter().map(|e| under(&e.path)).collect();
            let suite: Vec<&str> = suite.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(alone, suite);
        }
        _ => panic!("alone {alone:?}, as the suite's section {:?}", suite.as_ref().map(|_| ())),
    }
}

/// A document read whole by the path-tracking deserializer, against `serde_json`.
fn document<T: DeserializeOwned + Serialize + Debug>(json: &[u8]) {
    let ours = from_slice::<T>(json);
    each_reported_once(&ours);
    against_serde_json(json, &ours);
    if let Ok(document) = &ours {
        let printed = serde_json::to_string(document).unwrap();
        assert_eq!(debug(&from_slice::<T>(printed.as_bytes())), debug(&ours), "printed as {printed}");
    }
}

fn against_serde_json<T: DeserializeOwned + Debug>(json: &[u8], ours: &Result<T, ConfigErrors>) {
    let theirs = serde_json::from_slice::<T>(json);
    match (ours, &theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(format!("{ours:?}"), format!("{theirs:?}")),
        (Ok(ours), Err(theirs)) => panic!("accepted what serde_json refuses ({theirs}): {ours:?}"),
        (Err(ours), Ok(theirs)) => {
            let value = serde_json::from_slice::<Value>(json).unwrap();
            assert!(
                crate::has_float(&value) || has_array_for_struct(&value, ours) || has_variant_object(&value),
                "refused what serde_json reads ({theirs:?}): {ours}"
            );
        }
        (Err(_), Err(_)) => {}
    }
}

/// Every member in error is reported, each once (a member is set aside once its error is reported).
fn each_reported_once<T>(result: &Result<T, ConfigErrors>) {
    if let Err(ConfigErrors(errors)) = result {
        for (i, error) in errors.iter().enumerate() {
            assert!(!errors[..i].contains(error), "{error} reported twice: {errors:?}");
        }
    }
}

/// Whether we refused a struct written as an array (`invalid type: sequence, expected struct …`).
fn has_array_for_struct(_value: &Value, ours: &ConfigErrors) -> bool {
    ours.0.iter().any(|e| e.message.starts_with("invalid type: sequence, expected struct"))
}

/// Whether a one-member object with a `null` value, `serde_json`'s other spelling of a unit variant, is in the value.
fn has_variant_object(value: &Value) -> bool {
    match value {
        Value::Object(members) => {
            (members.len() == 1 && members.values().all(Value::is_null)) || members.values().any(has_variant_object)
        }
        Value::Array(items) => items.iter().any(has_variant_object),
        _ => false,
    }
}

/// A syntax error (always at the document's root, and placed by line and column).
fn is_syntax(error: &ConfigError) -> bool {
    error.path == "(document)" && error.message.contains(" at line ")
}

fn debug<T: Debug>(value: &T) -> String {
    format!("{value:?}")
}
