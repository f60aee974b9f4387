//! Which configuration is serving: a fingerprint of what a stage compiled, the same wherever it is computed (the
//! module at configure time, `egressctl validate` on the file before it is applied), so that "which policy answered
//! this request?" has one answer, in logs, metrics, decision records and audit events.
//!
//! It is a SHA-256 over the configuration as read, value by value in a fixed order, each value tagged with its field
//! and length-prefixed: formatting, key order, YAML or JSON, defaults written out or left implicit make no
//! difference; any value that can change a decision does. It is shown as its first 16 hex digits, and as a metric
//! value its first 48 bits (exact in a Prometheus float).

use sha2::{Digest, Sha256};
use std::fmt;

/// A configuration's fingerprint (the default: of nothing yet, all zero).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The first 48 bits, as a metric's value (Prometheus gauges are floats: exact up to 2^53).
    pub fn gauge(&self) -> u64 {
        self.0.iter().take(6).fold(0, |value, &byte| (value << 8) | u64::from(byte))
    }
}

/// The first 16 hex digits (64 bits), e.g. `9f2c04e1b7a3d580`.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().take(8).try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Builds a [`Fingerprint`] value by value (the policy is compiled rule by rule, never whole in memory).
#[derive(Clone, Default)]
pub struct Fingerprinter(Sha256);

impl Fingerprinter {
    /// `kind` names what is fingerprinted (`policy`, `identity`, `audit`): equal values of different kinds differ.
    pub fn new(kind: &str) -> Fingerprinter {
        let mut hasher = Fingerprinter::default();
        hasher.text("kind", kind);
        hasher
    }

    /// One value: its field's tag and its text, both length-prefixed so no two sequences of values collide.
    pub fn text(&mut self, tag: &str, value: &str) {
        for part in [tag, value] {
            self.0.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            self.0.update(part.as_bytes());
        }
    }

    /// An optional list: absent and empty differ.
    pub fn list<T: AsRef<str>>(&mut self, tag: &str, values: Option<&[T]>) {
        match values {
            None => self.text(tag, "-"),
            Some(values) => {
                self.text(tag, &values.len().to_string());
                for value in values {
                    self.text(tag, value.as_ref());
                }
            }
        }
    }

    /// A number, a flag or any other value with a canonical text form.
    pub fn value(&mut self, tag: &str, value: impl fmt::Display) {
        self.text(tag, &value.to_string());
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[(&str, &str)]) -> Fingerprint {
        let mut hasher = Fingerprinter::new("test");
        for (tag, value) in values {
            hasher.text(tag, value);
        }
        hasher.finish()
    }

    #[test]
    fn values_are_delimited_and_tagged() {
        assert_ne!(of(&[("a", "bc")]), of(&[("ab", "c")]));
        assert_ne!(of(&[("a", "b"), ("a", "c")]), of(&[("a", "bc")]));
        assert_ne!(of(&[("a", "b")]), of(&[("x", "b")]));
        assert_eq!(of(&[("a", "b")]), of(&[("a", "b")]));
        let mut absent = Fingerprinter::new("test");
        absent.list::<&str>("hosts", None);
        let mut empty = Fingerprinter::new("test");
        empty.list::<&str>("hosts", Some(&[]));
        assert_ne!(absent.finish(), empty.finish());
    }

    #[test]
    fn it_shows_as_16_hex_digits_and_its_gauge_is_the_first_48_bits() {
        let fingerprint = of(&[("a", "b")]);
        let text = fingerprint.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(fingerprint.gauge(), u64::from_str_radix(text.get(..12).unwrap(), 16).unwrap());
        assert!(fingerprint.gauge() < 1 << 48);
    }
}
