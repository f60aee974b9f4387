//! Writing: JSON strings escaped as `serde_json` escapes them, and objects member by member into one buffer.

use std::fmt::Write as _;

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
