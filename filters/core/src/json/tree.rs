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

impl Value {
    /// Removes the innermost object member on `position` (indices of members and elements, outermost last, as
    /// [`super::Error::position`] gives them), with every repetition of its key (the derived visitors read only the
    /// first; the rest are refused as duplicates); false when there is none (`position` is this value itself, or
    /// lies in no object).
    pub(crate) fn remove_innermost_member(&mut self, position: &[usize]) -> bool {
        let Some((&index, inner)) = position.split_last() else { return false };
        match self {
            Value::Object(members) => {
                let Some((key, member)) = members.get_mut(index) else { return false };
                if member.remove_innermost_member(inner) {
                    return true;
                }
                let key = key.clone();
                members.retain(|(other, _)| *other != key);
                true
            }
            Value::Array(elements) => {
                elements.get_mut(index).is_some_and(|element| element.remove_innermost_member(inner))
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Number {
    Unsigned(u64),
    Negative(i64),
    /// A fraction, an exponent, outside the 64-bit range, or `-0`: kept as written, for the error message.
    Other(String),
}
