//! Where a value is in a document ([`Path`]), and what was wrong with it there ([`Error`]): what the reader and the
//! deserializer both report.

use super::tree::{Number, Value};
use super::write::push_string;
use crate::config_error::{ConfigError, QUOTED_MAX};
use serde::de::{self, Expected, Unexpected};
use std::fmt::{self, Write as _};

/// Where a value is in the document, as a chain to the root.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    /// `rules[2].hosts[0]`; the root alone is `(document)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str(ROOT),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(Path::Root, index) => write!(f, "[{index}]"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A deserialization error; the path is that of the innermost value it was raised for. Boxed: every generic
/// `Result` the derived visitors pass around stays one pointer wide.
#[derive(Debug)]
pub struct Error(pub(super) Box<ErrorInner>);

#[derive(Debug)]
pub(super) struct ErrorInner {
    pub(super) path: Option<String>,
    pub(super) message: String,
    pub(super) kind: Kind,
    /// Where in the tree it lies, for [`super::deserialize_at`]: the index of each member or element on its path,
    /// innermost first (a path as displayed is ambiguous: a key may hold `.` or `[`). Empty from the reader.
    pub(super) position: Vec<usize>,
}

/// Whether reading can go on after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// The value is not what was expected, and the reader is past it: the next value can be read.
    Data,
    /// The text is not JSON (or the source failed): nothing after it can be read.
    Syntax,
    /// Errors of values inside this one were recorded with the reader ([`Reader::errors`]) and it was read to its
    /// end, without a result.
    Recorded,
}

impl Error {
    pub(super) fn new(message: String) -> Error {
        Error(Box::new(ErrorInner { path: None, message, kind: Kind::Data, position: Vec::new() }))
    }

    pub(crate) fn recorded() -> Error {
        Error(Box::new(ErrorInner { path: None, message: String::new(), kind: Kind::Recorded, position: Vec::new() }))
    }

    /// Whether this stands for errors recorded with the reader, the value in error read to its end.
    pub(crate) fn is_recorded(&self) -> bool {
        self.0.kind == Kind::Recorded
    }

    /// The index of each member or element on its path in the tree, outermost last.
    pub(super) fn position(&self) -> &[usize] {
        &self.0.position
    }

    /// Notes, as it leaves a member or element of the tree, that member's or element's index.
    pub(super) fn within(mut self, index: usize) -> Error {
        self.0.position.push(index);
        self
    }

    /// `missing field `name``, raised at the path of the struct that misses it.
    pub(super) fn is_missing_field(&self) -> bool {
        self.0.message.starts_with("missing field `")
    }

    pub(super) fn at(mut self, path: &Path<'_>) -> Error {
        if self.0.path.is_none() {
            self.0.path = Some(path.to_string());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.path {
            Some(path) => write!(f, "{path}: {}", self.0.message),
            None => f.write_str(&self.0.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error::new(message.to_string())
    }

    // Overridden so that `Unexpected`'s own `Display` (which formats floats) is never linked.
    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Error::unexpected("invalid type", unexpected, expected)
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Error::unexpected("invalid value", unexpected, expected)
    }
}

impl Error {
    /// `invalid type: string "80", expected i64`, worded as `serde_json` words it.
    pub(super) fn unexpected(what: &str, unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        let mut message = format!("{what}: ");
        let _ = match unexpected {
            Unexpected::Bool(b) => write!(message, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(message, "integer `{n}`"),
            Unexpected::Signed(n) => write!(message, "integer `{n}`"),
            Unexpected::Float(_) => write!(message, "floating point"),
            Unexpected::Char(c) => write!(message, "character `{c}`"),
            // JSON-escaped rather than `{:?}` (same text for any printable string): no `Debug` for `str` linked.
            // A long one cut as `ConfigError::new` cuts quoted values.
            Unexpected::Str(s) if s.len() > QUOTED_MAX => {
                let mut end = QUOTED_MAX - 16;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                message.push_str("string ");
                push_string(&mut message, s.get(..end).unwrap_or_default());
                write!(message, "… ({} bytes)", s.len())
            }
            Unexpected::Str(s) => {
                message.push_str("string ");
                push_string(&mut message, s);
                Ok(())
            }
            Unexpected::Bytes(_) => write!(message, "byte array"),
            Unexpected::Unit => write!(message, "null"),
            Unexpected::Option => write!(message, "Option value"),
            Unexpected::NewtypeStruct => write!(message, "newtype struct"),
            Unexpected::Seq => write!(message, "sequence"),
            Unexpected::Map => write!(message, "map"),
            Unexpected::Enum => write!(message, "enum"),
            Unexpected::UnitVariant => write!(message, "unit variant"),
            Unexpected::NewtypeVariant => write!(message, "newtype variant"),
            Unexpected::TupleVariant => write!(message, "tuple variant"),
            Unexpected::StructVariant => write!(message, "struct variant"),
            Unexpected::Other(other) => write!(message, "{other}"),
        };
        let _ = write!(message, ", expected {expected}");
        Error::new(message)
    }
}

/// `invalid type: <value>, expected <expected>` at `path`.
pub(super) fn invalid_type(value: &Value, expected: &dyn Expected, path: &Path<'_>) -> Error {
    let float;
    let unexpected = match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(Number::Unsigned(n)) => Unexpected::Unsigned(*n),
        Value::Number(Number::Negative(n)) => Unexpected::Signed(*n),
        Value::Number(Number::Other(raw)) => {
            float = format!("floating point `{raw}`");
            Unexpected::Other(&float)
        }
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    };
    <Error as de::Error>::invalid_type(unexpected, expected).at(path)
}

/// How the document's root is named in a path.
pub(super) const ROOT: &str = "(document)";

/// The error as a configuration problem: its path (the root's when it has none) and message.
pub(super) fn config_error(error: Error) -> ConfigError {
    let ErrorInner { path, message, kind: _, position: _ } = *error.0;
    ConfigError::new(path.unwrap_or_else(|| ROOT.to_string()), message)
}
