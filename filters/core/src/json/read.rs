//! Parsing: the pull [`Reader`] over any source, the tree it builds for small documents, and the readers the
//! modules use instead of `serde` for the documents they read by hand.

use super::error::{config_error, invalid_type, Error, ErrorInner, Kind, Path, ROOT};
use super::tree::{Number, Value};
use crate::config_error::{ConfigError, ConfigErrors};
use serde::de::{self, Expected, Unexpected};
use std::io::BufRead;

/// As deep as `serde_json` nests: 127 levels of arrays and objects; the 128th is refused, as `serde_json` refuses
/// it (its recursion limit of 128 counts the level that fails), at the same line and column.
const MAX_DEPTH: usize = 127;

/// Parses a whole document (RFC 8259; no trailing commas, comments or other extensions) into a tree.
pub(crate) fn parse(json: &[u8]) -> Result<Value, Error> {
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
        Error(Box::new(ErrorInner { path: Some(ROOT.to_string()), message, kind: Kind::Syntax, position: Vec::new() }))
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
        let as_error = |ConfigError { path, message }| {
            Error(Box::new(ErrorInner { path: Some(path), message, kind: Kind::Data, position: Vec::new() }))
        };
        self.errors.extend(problems.into_iter().map(as_error));
    }

    /// Records the errors of a value already read (a section deserialized from its tree), for its member to end
    /// [`Kind::Recorded`].
    pub(crate) fn record_errors(&mut self, errors: Vec<Error>) -> Error {
        self.errors.extend(errors);
        Error::recorded()
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
