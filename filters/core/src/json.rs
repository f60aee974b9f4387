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

use crate::policy::{ConfigError, ConfigErrors};
use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};
use std::fmt::{self, Write as _};
use std::io::BufRead;
use std::slice;

/// Parses a JSON document into `T`. Every error (syntax or type) comes back with its field path; the document root
/// is `(document)`.
pub fn from_slice<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConfigErrors> {
    let value = parse(json).map_err(config_errors)?;
    T::deserialize(De { value: &value, path: Path::Root }).map_err(config_errors)
}

/// [`from_slice`] for text.
pub fn from_str<T: DeserializeOwned>(json: &str) -> Result<T, ConfigErrors> {
    from_slice(json.as_bytes())
}

/// Deserializes a value already read into a tree, its errors at `path` (a section of a larger document).
pub(crate) fn deserialize_at<T: DeserializeOwned>(value: &Value, path: &Path<'_>) -> Result<T, Error> {
    T::deserialize(De { value, path: *path })
}

const ROOT: &str = "(document)";

fn config_errors(error: Error) -> ConfigErrors {
    ConfigErrors(vec![config_error(error)])
}

fn config_error(error: Error) -> ConfigError {
    let ErrorInner { path, message, kind: _ } = *error.0;
    ConfigError::new(path.unwrap_or_else(|| ROOT.to_string()), message)
}

// ---------------------------------------------------------------------------------------------------------------
// The reader, and the tree.

/// A parsed value, for the serde deserializer below (small documents: the audit and identity configurations, the
/// filter-state records) and for the value of a type error.
#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    /// Members in document order; a repeated key is kept (the derived visitors refuse duplicate fields).
    Object(Vec<(String, Value)>),
}

#[derive(Debug)]
pub(crate) enum Number {
    Unsigned(u64),
    Negative(i64),
    /// A fraction, an exponent, outside the 64-bit range, or `-0`: kept as written, for the error message.
    Other(String),
}

/// As deep as `serde_json` nests: 127 levels of arrays and objects; the 128th is refused, as `serde_json` refuses
/// it (its recursion limit of 128 counts the level that fails), at the same line and column.
const MAX_DEPTH: usize = 127;

/// Parses a whole document (RFC 8259; no trailing commas, comments or other extensions) into a tree.
fn parse(json: &[u8]) -> Result<Value, Error> {
    let mut source = json;
    let mut reader = Reader::new(&mut source);
    let value = reader.tree()?;
    reader.end()?;
    Ok(value)
}

/// A pull parser over any [`BufRead`]: a document is read as it arrives (the allow-list reads its plugin
/// configuration from the host 64 KiB at a time), so a large one never has to be whole in memory, as text or as a
/// tree. The readers of `crate::documents` walk it member by member; [`Reader::tree`] parses one value whole.
///
/// One parser for every source (`&[u8]` is a `BufRead`), behind `dyn`: one copy in each module.
pub(crate) struct Reader<'r> {
    source: &'r mut dyn Source,
    /// Where a syntax error is, as `serde_json` places it: 1-based line, bytes read on it.
    line: usize,
    column: usize,
    depth: usize,
    /// The source's own failure: reported instead of the syntax error it causes.
    failure: Option<String>,
    /// Errors in values the reader went past to report every problem of a document, not only its first
    /// ([`Reader::members`], [`Reader::elements`]).
    errors: Vec<Error>,
}

type Parsed<T> = Result<T, &'static str>;

/// What a [`Reader`] needs of a [`BufRead`]. A `dyn BufRead` would link every `Read` and `BufRead` method of each
/// source type into the modules (`read_to_end`, `read_until` …), for two.
pub(crate) trait Source {
    /// What is buffered, empty at the end; the failure's message when the source fails.
    fn fill(&mut self) -> Result<&[u8], String>;
    fn consume(&mut self, n: usize);
}

impl<B: BufRead> Source for B {
    fn fill(&mut self) -> Result<&[u8], String> {
        self.fill_buf().map_err(|e| e.to_string())
    }

    fn consume(&mut self, n: usize) {
        BufRead::consume(self, n);
    }
}

impl<'r> Reader<'r> {
    pub(crate) fn new(source: &'r mut dyn Source) -> Reader<'r> {
        Reader { source, line: 1, column: 0, depth: 0, failure: None, errors: Vec::new() }
    }

    /// The syntax error `what` at the current position (or the source's failure).
    fn syntax(&mut self, what: &str) -> Error {
        let message = match self.failure.take() {
            Some(failure) => failure,
            None => format!("{what} at line {} column {}", self.line, self.column),
        };
        Error(Box::new(ErrorInner { path: Some(ROOT.to_string()), message, kind: Kind::Syntax }))
    }

    /// What the source has buffered; empty at its end or when it failed.
    fn buffer(&mut self) -> &[u8] {
        match self.source.fill() {
            Ok(buffer) => buffer,
            Err(failure) => {
                self.failure.get_or_insert(failure);
                &[]
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.buffer().first().copied()
    }

    /// Consumes `n` buffered bytes, none of them a line break.
    fn advance(&mut self, n: usize) {
        self.source.consume(n);
        self.column += n;
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.source.consume(1);
        if byte == b'\n' {
            self.line += 1;
            self.column = 0;
        } else {
            self.column += 1;
        }
        Some(byte)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.next();
        }
    }

    /// The next value, parsed whole.
    pub(crate) fn tree(&mut self) -> Result<Value, Error> {
        self.value().map_err(|what| self.syntax(what))
    }

    /// The end of the document: nothing but whitespace is left.
    pub(crate) fn end(&mut self) -> Result<(), Error> {
        self.skip_whitespace();
        match self.next() {
            None if self.failure.is_none() => Ok(()),
            _ => Err(self.syntax("trailing characters")),
        }
    }

    fn value(&mut self) -> Parsed<Value> {
        self.skip_whitespace();
        match self.peek() {
            None => Err("EOF while parsing a value"),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => {
                self.advance(1);
                self.string_rest().map(Value::String)
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(b'[') => self.array(),
            Some(b'{') => self.object(),
            Some(_) => {
                // Placed after the byte, as `serde_json` places it.
                self.next();
                Err("expected value")
            }
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Parsed<Value> {
        for expected in word.bytes() {
            match self.next() {
                Some(b) if b == expected => {}
                None => return Err("EOF while parsing a value"),
                Some(_) => return Err("expected ident"),
            }
        }
        Ok(value)
    }

    /// Enters the array or object whose bracket is next; `true` when it is empty (its `close` read too).
    fn open(&mut self, close: u8) -> Parsed<bool> {
        self.depth += 1;
        // The bracket is read first: `serde_json` places the error just after it.
        self.advance(1);
        if self.depth > MAX_DEPTH {
            return Err("recursion limit exceeded");
        }
        self.skip_whitespace();
        match self.peek() {
            Some(b) if b == close => {
                self.advance(1);
                self.depth -= 1;
                Ok(true)
            }
            // `serde_json`'s words for a document that ends right inside `[` (for `{`, `key` has them).
            None if close == b']' => Err("EOF while parsing a list"),
            _ => Ok(false),
        }
    }

    /// After an element or member: `true` when another follows, `false` at `close` (then the container is left).
    fn more(&mut self, close: u8, eof: &'static str, expected: &'static str) -> Parsed<bool> {
        self.skip_whitespace();
        match self.next() {
            Some(b',') => {}
            Some(b) if b == close => {
                self.depth -= 1;
                return Ok(false);
            }
            None => return Err(eof),
            Some(_) => return Err(expected),
        }
        self.skip_whitespace();
        match self.peek() {
            Some(b) if b == close => {
                self.advance(1);
                Err("trailing comma")
            }
            // After a comma `serde_json` expects a value, in objects too (not the key `key` would report).
            None => Err("EOF while parsing a value"),
            _ => Ok(true),
        }
    }

    fn more_elements(&mut self) -> Parsed<bool> {
        self.more(b']', "EOF while parsing a list", "expected `,` or `]`")
    }

    fn more_members(&mut self) -> Parsed<bool> {
        self.more(b'}', "EOF while parsing an object", "expected `,` or `}`")
    }

    /// A member's key and the colon after it.
    fn key(&mut self) -> Parsed<String> {
        self.skip_whitespace();
        match self.next() {
            Some(b'"') => {}
            None => return Err("EOF while parsing an object"),
            Some(_) => return Err("key must be a string"),
        }
        let key = self.string_rest()?;
        self.skip_whitespace();
        match self.next() {
            Some(b':') => Ok(key),
            None => Err("EOF while parsing an object"),
            Some(_) => Err("expected `:`"),
        }
    }

    fn array(&mut self) -> Parsed<Value> {
        let mut items = Vec::new();
        if !self.open(b']')? {
            loop {
                items.push(self.value()?);
                if !self.more_elements()? {
                    break;
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn object(&mut self) -> Parsed<Value> {
        let mut members = Vec::new();
        if !self.open(b'}')? {
            loop {
                let key = self.key()?;
                members.push((key, self.value()?));
                if !self.more_members()? {
                    break;
                }
            }
        }
        Ok(Value::Object(members))
    }

    /// The rest of a string whose opening quote was read.
    fn string_rest(&mut self) -> Parsed<String> {
        let mut out = Vec::new();
        loop {
            // The run of plain bytes buffered (no line break among them), taken at once.
            let buffer = self.buffer();
            let run = buffer.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(buffer.len());
            out.extend_from_slice(buffer.get(..run).unwrap_or_default());
            let more = run > 0 && run == buffer.len();
            self.advance(run);
            if more {
                continue;
            }
            match self.next() {
                Some(b'"') => {
                    return String::from_utf8(out).map_err(|e| {
                        // Placed at the first byte that is not UTF-8, counted back from the closing quote as
                        // `serde_json` counts it (in decoded bytes: after an escape, as approximate as its).
                        let after = e.as_bytes().len() - e.utf8_error().valid_up_to();
                        self.column = self.column.saturating_sub(after);
                        "invalid unicode code point"
                    });
                }
                Some(b'\\') => {
                    let unescaped = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        None => return Err("EOF while parsing a string"),
                        Some(_) => return Err("invalid escape"),
                    };
                    out.extend_from_slice(unescaped.encode_utf8(&mut [0; 4]).as_bytes());
                }
                None => return Err("EOF while parsing a string"),
                Some(_) => return Err("control character (\\u0000-\\u001F) found while parsing a string"),
            }
        }
    }

    fn hex4(&mut self) -> Parsed<u32> {
        // All four bytes are read before any is checked, as `serde_json` reads them: an error is placed after them.
        let mut digits = [0u8; 4];
        for digit in &mut digits {
            *digit = self.next().ok_or("EOF while parsing a string")?;
        }
        let mut code = 0;
        for digit in digits {
            code = code * 16 + char::from(digit).to_digit(16).ok_or("invalid escape")?;
        }
        Ok(code)
    }

    /// `\uXXXX` (its `\u` read), a surrogate pair as one character.
    fn unicode_escape(&mut self) -> Parsed<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                for expected in [b'\\', b'u'] {
                    match self.next() {
                        Some(b) if b == expected => {}
                        // `serde_json`'s words when the document ends there.
                        None => return Err("EOF while parsing a string"),
                        Some(_) => return Err("unexpected end of hex escape"),
                    }
                }
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err("lone leading surrogate in hex escape");
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err("lone leading surrogate in hex escape"),
            code => code,
        };
        char::from_u32(code).ok_or("invalid unicode code point")
    }

    fn number(&mut self) -> Parsed<Number> {
        let mut raw = String::new();
        if self.peek() == Some(b'-') {
            self.advance(1);
            raw.push('-');
        }
        match self.next() {
            // No leading zeros.
            Some(b'0') if self.peek().is_some_and(|b| b.is_ascii_digit()) => {
                self.advance(1);
                return Err("invalid number");
            }
            Some(digit @ b'0'..=b'9') => {
                raw.push(char::from(digit));
                self.digits(&mut raw);
            }
            // `serde_json`'s words where a digit is due and the document ends.
            None => return Err("EOF while parsing a value"),
            _ => return Err("invalid number"),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.advance(1);
            raw.push('.');
            self.required_digits(&mut raw)?;
            integer = false;
        }
        if let Some(e @ (b'e' | b'E')) = self.peek() {
            self.advance(1);
            raw.push(char::from(e));
            if let Some(sign @ (b'+' | b'-')) = self.peek() {
                self.advance(1);
                raw.push(char::from(sign));
            }
            self.required_digits(&mut raw)?;
            integer = false;
        }
        let number = match (integer, raw.starts_with('-')) {
            (true, false) => raw.parse().ok().map(Number::Unsigned),
            // `-0` is a float to `serde_json` (`-0.0`, which no integer holds), so a float here too: refused.
            (true, true) if raw == "-0" => None,
            (true, true) => raw.parse().ok().map(Number::Negative),
            (false, _) => None,
        };
        Ok(number.unwrap_or(Number::Other(raw)))
    }

    fn digits(&mut self, raw: &mut String) {
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            self.advance(1);
            raw.push(char::from(digit));
        }
    }

    fn required_digits(&mut self, raw: &mut String) -> Parsed<()> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(match self.next() {
                None => "EOF while parsing a value",
                Some(_) => "invalid number",
            });
        }
        self.digits(raw);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The deserializer.

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
pub struct Error(Box<ErrorInner>);

#[derive(Debug)]
struct ErrorInner {
    path: Option<String>,
    message: String,
    kind: Kind,
}

/// Whether reading can go on after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The value is not what was expected, and the reader is past it: the next value can be read.
    Data,
    /// The text is not JSON (or the source failed): nothing after it can be read.
    Syntax,
    /// Errors of values inside this one were recorded with the reader ([`Reader::errors`]) and it was read to its
    /// end, without a result.
    Recorded,
}

impl Error {
    fn new(message: String) -> Error {
        Error(Box::new(ErrorInner { path: None, message, kind: Kind::Data }))
    }

    pub(crate) fn recorded() -> Error {
        Error(Box::new(ErrorInner { path: None, message: String::new(), kind: Kind::Recorded }))
    }

    /// Whether this stands for errors recorded with the reader, the value in error read to its end.
    pub(crate) fn is_recorded(&self) -> bool {
        self.0.kind == Kind::Recorded
    }

    fn at(mut self, path: &Path<'_>) -> Error {
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
    fn unexpected(what: &str, unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        let mut message = format!("{what}: ");
        let _ = match unexpected {
            Unexpected::Bool(b) => write!(message, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(message, "integer `{n}`"),
            Unexpected::Signed(n) => write!(message, "integer `{n}`"),
            Unexpected::Float(_) => write!(message, "floating point"),
            Unexpected::Char(c) => write!(message, "character `{c}`"),
            // JSON-escaped rather than `{:?}` (same text for any printable string): no `Debug` for `str` linked.
            // A long one cut as `ConfigError::new` cuts quoted values.
            Unexpected::Str(s) if s.len() > crate::policy::QUOTED_MAX => {
                let mut end = crate::policy::QUOTED_MAX - 16;
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
fn invalid_type(value: &Value, expected: &dyn Expected, path: &Path<'_>) -> Error {
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

/// Deserializes one value of the tree, knowing where it is.
///
/// Each typed method hands the visitor only the one form that type takes (a struct only an object, a string only a
/// string …) and refuses the rest itself: every derived visitor is instantiated with just the code it needs.
/// Accepting a JSON array for a struct, as `serde_json` does, would instantiate every struct's sequence visitor.
struct De<'v, 'p> {
    value: &'v Value,
    path: Path<'p>,
}

impl<'v> De<'v, '_> {
    /// `invalid type: <this value>, expected <what the visitor wanted>`, at this path.
    fn invalid(&self, expected: &dyn Expected) -> Error {
        invalid_type(self.value, expected, &self.path)
    }

    fn integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Number(Number::Unsigned(n)) => visitor.visit_u64(*n),
            Value::Number(Number::Negative(n)) => visitor.visit_i64(*n),
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }

    fn string<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error>
    where
        'v: 'de,
    {
        match self.value {
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }

    fn seq<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error>
    where
        'v: 'de,
    {
        match self.value {
            Value::Array(items) => {
                let mut seq = Seq { items: items.iter(), index: 0, parent: &self.path };
                visitor.visit_seq(&mut seq).and_then(|value| seq.end(items.len()).map(|()| value))
            }
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }

    fn map<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error>
    where
        'v: 'de,
    {
        match self.value {
            Value::Object(members) => {
                visitor.visit_map(Map { members: members.iter(), value: None, parent: &self.path })
            }
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }
}

impl<'de> de::Deserializer<'de> for De<'de, '_> {
    type Error = Error;

    /// For types that take any form (none of the configurations' own).
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit().map_err(|e: Error| e.at(&self.path)),
            Value::Bool(b) => visitor.visit_bool(*b).map_err(|e: Error| e.at(&self.path)),
            Value::Number(_) => self.integer(visitor),
            Value::String(_) => self.string(visitor),
            Value::Array(_) => self.seq(visitor),
            Value::Object(_) => self.map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Bool(b) => visitor.visit_bool(*b),
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.integer(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.string(visitor)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.string(visitor)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.string(visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.seq(visitor)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.map(visitor)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.map(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let path = self.path;
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.at(&path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        let path = self.path;
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&path))
    }

    /// Unit variants, written as strings (the only enums the configurations have).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) => {
                let variant: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                visitor.visit_enum(variant)
            }
            _ => Err(self.invalid(&visitor)),
        }
        .map_err(|e| e.at(&self.path))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char bytes byte_buf
    }
}

struct Seq<'v, 'p> {
    items: slice::Iter<'v, Value>,
    index: usize,
    parent: &'p Path<'p>,
}

impl Seq<'_, '_> {
    /// A visitor that stopped early (a fixed-size array) leaves elements over: refused, as `serde_json` does.
    fn end(&self, len: usize) -> Result<(), Error> {
        if self.items.len() == 0 {
            Ok(())
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in sequence"))
        }
    }
}

impl<'de> de::SeqAccess<'de> for Seq<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some(value) = self.items.next() else { return Ok(None) };
        let path = Path::Index(self.parent, self.index);
        self.index += 1;
        seed.deserialize(De { value, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'v, 'p> {
    members: slice::Iter<'v, (String, Value)>,
    value: Option<&'v (String, Value)>,
    parent: &'p Path<'p>,
}

impl<'de> de::MapAccess<'de> for Map<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(member) = self.members.next() else { return Ok(None) };
        self.value = Some(member);
        let key: BorrowedStrDeserializer<'de, Error> = BorrowedStrDeserializer::new(&member.0);
        // An unknown field is reported at its own path (`rules[0].portz: unknown field`).
        seed.deserialize(key).map(Some).map_err(|e| e.at(&Path::Key(self.parent, &member.0)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some((key, value)) => seed.deserialize(De { value, path: Path::Key(self.parent, key) }),
            None => Err(de::Error::custom("value before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading without serde.
//
// The documents the modules read by hand (the policy, the redirect hop state, the filter-state records) are read
// with these (`crate::documents`, `crate::state`, `crate::redirect`), which is a fraction of the code the derived
// visitors take, straight from the [`Reader`]. Every error is built by serde's own constructors, and tests hold
// each reader to the derived `Deserialize` of its type: the same values, the same errors at the same paths.

/// Reads the document in `source` with `read` (handed the reader at the root), and then its end. Every problem
/// comes back, in document order: a value of the wrong type or an unknown field does not end the reading (the
/// reader goes past it, see [`Reader::members`]); a syntax error does, being the last.
pub(crate) fn read<T>(
    source: &mut dyn Source,
    read: impl FnOnce(&mut Reader<'_>, &Path<'_>) -> Result<T, Error>,
) -> Result<T, ConfigErrors> {
    let mut reader = Reader::new(source);
    let result = read(&mut reader, &Path::Root).and_then(|value| reader.end().map(|()| value));
    let mut errors = std::mem::take(&mut reader.errors);
    match result {
        Ok(value) if errors.is_empty() => return Ok(value),
        Ok(_) => {}
        Err(error) if error.0.kind == Kind::Recorded => {}
        Err(error) => errors.push(error),
    }
    Err(ConfigErrors(errors.into_iter().map(config_error).collect()))
}

impl Reader<'_> {
    /// The next value, whatever it is, when it is not the `expecting` the caller wanted: read whole, for the error.
    fn refuse(&mut self, expecting: &dyn Expected, path: &Path<'_>) -> Error {
        let root = matches!(path, Path::Root);
        self.skip_whitespace();
        if root && self.peek().is_none() && self.failure.is_none() {
            return Error::new(format!("the document is empty, expected {expecting}")).at(path);
        }
        match self.tree() {
            Ok(Value::Null) if root => {
                Error::new(format!("the document is empty (null), expected {expecting}")).at(path)
            }
            Ok(value) => invalid_type(&value, expecting, path),
            Err(e) => e,
        }
    }

    /// Whether errors were recorded so far.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Records problems found in values already read (by the caller: a compiler of the rules read so far), with the
    /// document's own.
    pub(crate) fn record(&mut self, problems: Vec<ConfigError>) {
        let as_error =
            |ConfigError { path, message }| Error(Box::new(ErrorInner { path: Some(path), message, kind: Kind::Data }));
        self.errors.extend(problems.into_iter().map(as_error));
    }

    /// Goes on after `result`, the reading of a member or element, unless it is a syntax error: an error in the
    /// value is recorded (once), and `failed` notes that the enclosing value has no result.
    fn go_on(&mut self, result: Result<(), Error>, failed: &mut bool) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.0.kind == Kind::Syntax => Err(error),
            Err(error) => {
                if error.0.kind == Kind::Data {
                    self.errors.push(error);
                }
                *failed = true;
                Ok(())
            }
        }
    }

    /// Whether the next value opens with `bracket` (whitespace before it skipped).
    fn opens_with(&mut self, bracket: u8) -> bool {
        self.skip_whitespace();
        self.peek() == Some(bracket)
    }

    /// Reads the members of an object (a struct with `fields`) in document order, handing each known one to
    /// `member`; unknown ones are refused when `deny_unknown`, else skipped. Returns which fields were present (bit
    /// `i` for `fields[i]`), for [`require`]. A member in error (of the wrong type, unknown, repeated) is recorded
    /// and the reading goes on to the object's end, which then has no result ([`Kind::Recorded`]): one document
    /// shows every such problem at once.
    pub(crate) fn members(
        &mut self,
        path: &Path<'_>,
        expecting: &str,
        fields: &'static [&'static str],
        deny_unknown: bool,
        // The reader at the member's value (which `member` must read), the member's index in `fields`, its path.
        member: &mut dyn FnMut(&mut Self, usize, &Path<'_>) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        if !self.opens_with(b'{') {
            return Err(self.refuse(&expecting, path));
        }
        let (mut seen, mut failed) = (0u64, false);
        if self.open(b'}').map_err(|what| self.syntax(what))? {
            return Ok(seen);
        }
        loop {
            let key = self.key().map_err(|what| self.syntax(what))?;
            let at = Path::Key(path, &key);
            let result = match fields.iter().position(|field| *field == key) {
                Some(index) if seen & (1 << index) != 0 => {
                    self.tree()?;
                    Err(<Error as de::Error>::duplicate_field(fields[index]).at(path))
                }
                Some(index) => {
                    seen |= 1 << index;
                    member(self, index, &at)
                }
                None if deny_unknown => {
                    self.tree()?;
                    Err(<Error as de::Error>::unknown_field(&key, fields).at(&at))
                }
                None => self.tree().map(drop),
            };
            self.go_on(result, &mut failed)?;
            if !self.more_members().map_err(|what| self.syntax(what))? {
                return if failed { Err(Error::recorded()) } else { Ok(seen) };
            }
        }
    }

    /// Reads the elements of an array, handing each to `element` at its index's path; an element in error is
    /// recorded and the reading goes on, as in [`Reader::members`].
    pub(crate) fn elements(
        &mut self,
        path: &Path<'_>,
        element: &mut dyn FnMut(&mut Self, &Path<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if !self.opens_with(b'[') {
            return Err(self.refuse(&"a sequence", path));
        }
        if self.open(b']').map_err(|what| self.syntax(what))? {
            return Ok(());
        }
        let mut failed = false;
        for index in 0.. {
            let result = element(self, &Path::Index(path, index));
            self.go_on(result, &mut failed)?;
            if !self.more_elements().map_err(|what| self.syntax(what))? {
                break;
            }
        }
        if failed {
            Err(Error::recorded())
        } else {
            Ok(())
        }
    }

    /// An array, each element read by `item`.
    pub(crate) fn list<T>(
        &mut self,
        path: &Path<'_>,
        mut item: impl FnMut(&mut Self, &Path<'_>) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        self.elements(path, &mut |reader, at| item(reader, at).map(|value| items.push(value)))?;
        Ok(items)
    }

    /// `null` is `None`, as for an `Option` field.
    pub(crate) fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<Option<T>, Error> {
        if self.opens_with(b'n') {
            // `null`, or a syntax error.
            self.tree()?;
            return Ok(None);
        }
        read(self).map(Some)
    }

    pub(crate) fn string(&mut self, path: &Path<'_>) -> Result<String, Error> {
        match self.tree()? {
            Value::String(s) => Ok(s),
            value => Err(invalid_type(&value, &"a string", path)),
        }
    }

    pub(crate) fn boolean(&mut self, path: &Path<'_>) -> Result<bool, Error> {
        match self.tree()? {
            Value::Bool(b) => Ok(b),
            value => Err(invalid_type(&value, &"a boolean", path)),
        }
    }

    pub(crate) fn int(&mut self, path: &Path<'_>) -> Result<i64, Error> {
        match self.tree()? {
            Value::Number(Number::Negative(n)) => Ok(n),
            Value::Number(Number::Unsigned(n)) => i64::try_from(n)
                .map_err(|_| <Error as de::Error>::invalid_value(Unexpected::Unsigned(n), &"i64").at(path)),
            value => Err(invalid_type(&value, &"i64", path)),
        }
    }

    pub(crate) fn uint(&mut self, path: &Path<'_>) -> Result<u64, Error> {
        match self.tree()? {
            Value::Number(Number::Unsigned(n)) => Ok(n),
            Value::Number(Number::Negative(n)) => {
                Err(<Error as de::Error>::invalid_value(Unexpected::Signed(n), &"u64").at(path))
            }
            value => Err(invalid_type(&value, &"u64", path)),
        }
    }

    /// The index in `variants` of a unit variant written as a string.
    pub(crate) fn variant(
        &mut self,
        path: &Path<'_>,
        expecting: &str,
        variants: &'static [&'static str],
    ) -> Result<usize, Error> {
        match self.tree()? {
            Value::String(s) => variants
                .iter()
                .position(|variant| *variant == s)
                .ok_or_else(|| <Error as de::Error>::unknown_variant(&s, variants).at(path)),
            value => Err(invalid_type(&value, &expecting, path)),
        }
    }
}

/// `missing field` unless [`Reader::members`] saw `fields[index]`.
pub(crate) fn require(seen: u64, index: usize, fields: &'static [&'static str], path: &Path<'_>) -> Result<(), Error> {
    match fields.get(index) {
        Some(field) if seen & (1 << index) == 0 => Err(<Error as de::Error>::missing_field(field).at(path)),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The writer.

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it (`"`, `\`, control characters).
pub fn push_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Most strings need no escape: one scan that compiles to a tight loop, then one copy.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// A JSON object written member by member, in the order given: `Object::new().str("error", "x").finish()`. Nested
/// objects ([`Object::object`]) are written into the same buffer, so an event is one growing string.
#[derive(Debug)]
pub struct Object {
    out: String,
    /// No member written yet (no comma before the next).
    empty: bool,
}

impl Default for Object {
    fn default() -> Self {
        Object::new()
    }
}

impl Object {
    pub fn new() -> Object {
        Object::with_capacity(64)
    }

    /// An object whose text is expected to take about `bytes`: one allocation instead of a string growing.
    pub fn with_capacity(bytes: usize) -> Object {
        let mut out = String::with_capacity(bytes);
        out.push('{');
        Object { out, empty: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        push_string(&mut self.out, key);
        self.out.push(':');
        &mut self.out
    }

    /// A member whose value is an object `fill` writes, into this object's buffer.
    pub fn object(mut self, key: &str, fill: impl FnOnce(Object) -> Object) -> Object {
        let mut out = std::mem::take(self.key(key));
        out.push('{');
        let child = fill(Object { out, empty: true });
        self.out = child.finish();
        self
    }

    /// A member whose value is already JSON.
    pub fn raw(mut self, key: &str, json: &str) -> Object {
        self.key(key).push_str(json);
        self
    }

    pub fn str(mut self, key: &str, value: &str) -> Object {
        push_string(self.key(key), value);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Object {
        match value {
            Some(value) => self.str(key, value),
            None => self.raw(key, "null"),
        }
    }

    /// A string member, or no member at all.
    pub fn str_if_some(self, key: &str, value: Option<&str>) -> Object {
        match value {
            Some(value) => self.str(key, value),
            None => self,
        }
    }

    pub fn uint(mut self, key: &str, value: u64) -> Object {
        let _ = write!(self.key(key), "{value}");
        self
    }

    /// An integer, or `null`.
    pub fn opt_uint(self, key: &str, value: Option<u64>) -> Object {
        match value {
            Some(value) => self.uint(key, value),
            None => self.raw(key, "null"),
        }
    }

    /// An array whose items `write` appends, one call per item (the commas are written here).
    pub fn array<T>(
        mut self,
        key: &str,
        items: impl IntoIterator<Item = T>,
        mut write: impl FnMut(&mut String, T),
    ) -> Object {
        let out = self.key(key);
        out.push('[');
        for (index, item) in items.into_iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            write(out, item);
        }
        out.push(']');
        self
    }

    pub fn bool(self, key: &str, value: bool) -> Object {
        self.raw(key, if value { "true" } else { "false" })
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

#[cfg(test)]
mod tests {
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
