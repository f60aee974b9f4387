//! A document parsed whole, for the deserializer (small documents: the audit and identity configurations, the
//! filter-state records) and for the value a type error names.

use super::Path;

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
    /// Removes the innermost object member whose path (under `path`, this value's) is `target` or holds it, with
    /// every repetition of its key (the derived visitors read only the first; the rest are refused as duplicates);
    /// false when no member does (`target` is this value itself, or lies in no object). Paths are compared as
    /// displayed (`rules[2].hosts[0]`).
    pub(crate) fn remove_member_covering(&mut self, path: &Path<'_>, target: &str) -> bool {
        let covers = |candidate: &str| {
            target.strip_prefix(candidate).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        match self {
            Value::Object(members) => {
                let Some(index) = members.iter().position(|(key, _)| covers(&Path::Key(path, key).to_string())) else {
                    return false;
                };
                let Some((key, member)) = members.get_mut(index) else { return false };
                let key = key.clone();
                if member.remove_member_covering(&Path::Key(path, &key), target) {
                    return true;
                }
                members.retain(|(other, _)| *other != key);
                true
            }
            Value::Array(elements) => elements.iter_mut().enumerate().any(|(index, element)| {
                let at = Path::Index(path, index);
                covers(&at.to_string()) && element.remove_member_covering(&at, target)
            }),
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
