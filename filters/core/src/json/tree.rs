//! A document parsed whole, for the deserializer (small documents: the audit and identity configurations, the
//! filter-state records) and for the value a type error names.

/// A parsed value.
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
