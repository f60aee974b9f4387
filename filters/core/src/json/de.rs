//! The `serde` deserializer over the tree: every value handed out knows its path, so every error names where it is.

use super::error::{invalid_type, Error, Path};
use super::tree::{Number, Value};
use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Visitor};
use std::slice;

/// Deserializes one value of the tree, knowing where it is.
///
/// Each typed method hands the visitor only the one form that type takes (a struct only an object, a string only a
/// string …) and refuses the rest itself: every derived visitor is instantiated with just the code it needs.
/// Accepting a JSON array for a struct, as `serde_json` does, would instantiate every struct's sequence visitor.
pub(crate) struct De<'v, 'p> {
    pub(super) value: &'v Value,
    pub(super) path: Path<'p>,
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
                visitor.visit_map(Map { members: members.iter(), index: 0, value: None, parent: &self.path })
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
        let index = self.index;
        self.index += 1;
        seed.deserialize(De { value, path: Path::Index(self.parent, index) }).map(Some).map_err(|e| e.within(index))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'v, 'p> {
    members: slice::Iter<'v, (String, Value)>,
    /// Of the next member.
    index: usize,
    /// The member whose key was read, and its index.
    value: Option<(usize, &'v (String, Value))>,
    parent: &'p Path<'p>,
}

impl<'de> de::MapAccess<'de> for Map<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(member) = self.members.next() else { return Ok(None) };
        let index = self.index;
        self.index += 1;
        self.value = Some((index, member));
        let key: BorrowedStrDeserializer<'de, Error> = BorrowedStrDeserializer::new(&member.0);
        // An unknown field is reported at its own path (`rules[0].portz: unknown field`).
        seed.deserialize(key).map(Some).map_err(|e| e.at(&Path::Key(self.parent, &member.0)).within(index))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some((index, (key, value))) => {
                seed.deserialize(De { value, path: Path::Key(self.parent, key) }).map_err(|e| e.within(index))
            }
            None => Err(de::Error::custom("value before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}
