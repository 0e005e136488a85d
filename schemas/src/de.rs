//! A serde deserializer over [`crate::tree`], so that every type or key error
//! carries the position and path of the node it came from, and unknown keys
//! arrive with the list of valid ones (serde hands it to
//! [`de::Error::unknown_field`]) rather than as text to pick apart.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use serde::forward_to_deserialize_any;

use crate::tree::{Entry, Node, Pos, Seg, Value};

#[derive(Debug)]
pub(crate) struct Error {
    pub message: String,
    /// Filled in by the innermost node that saw the error.
    pub at: Option<(Pos, Vec<Seg>)>,
}

impl Error {
    fn new(message: String) -> Self {
        Error { message, at: None }
    }

    fn locate(mut self, pos: Pos, path: &[Seg]) -> Self {
        if self.at.is_none() {
            self.at = Some((pos, path.to_vec()));
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::new(format!(
            "expected {}, found {}",
            expected(exp),
            found(unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::new(format!(
            "expected {}, found {}",
            expected(exp),
            found(unexp)
        ))
    }

    fn unknown_field(field: &str, valid: &'static [&'static str]) -> Self {
        Error::new(format!(
            "unknown key `{field}`; {}",
            hint(field, valid, "valid keys here")
        ))
    }

    fn unknown_variant(variant: &str, valid: &'static [&'static str]) -> Self {
        Error::new(format!(
            "unknown value `{variant}`; {}",
            hint(variant, valid, "use one of")
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Error::new(format!("missing required key `{field}`"))
    }
}

/// `did you mean `x`?` for a near miss, else the list of valid names.
pub(crate) fn hint(got: &str, valid: &[&str], list_intro: &str) -> String {
    match nearest(got, valid) {
        Some(best) => format!("did you mean `{best}`?"),
        None if valid.is_empty() => "nothing is allowed here".into(),
        None => format!(
            "{list_intro}: {}",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The closest valid name, if it is close enough to be a typo: at most one
/// edit per three characters (transpositions count as one), and never a
/// rewrite of the whole name.
pub(crate) fn nearest<'a>(got: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::osa_distance(got, v), *v))
        .filter(|(d, v)| {
            let longer = got.chars().count().max(v.chars().count());
            *d <= (longer / 3).max(1) && *d < longer
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// serde's names for what it expected, in an admin's words.
fn expected(exp: &dyn de::Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" => "a whole number, 0 or more".into(),
        "i64" => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping of keys to values".into(),
        _ if s.starts_with("struct ") => "a mapping of keys to values".into(),
        _ => s,
    }
}

fn found(unexp: Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Unit => "nothing (an empty value)".into(),
        Unexpected::Map => "a mapping".into(),
        Unexpected::Seq => "a list".into(),
        other => other.to_string(),
    }
}

/// A plain scalar read by YAML 1.2's core schema.
enum Scalar<'a> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(&'a str),
}

fn resolve(text: &str, plain: bool) -> Scalar<'_> {
    if !plain {
        return Scalar::Text(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix('+').unwrap_or(text);
    if let Some(hex) = digits.strip_prefix("0x") {
        if let Ok(n) = u64::from_str_radix(hex, 16) {
            return Scalar::Unsigned(n);
        }
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        if let Ok(n) = u64::from_str_radix(oct, 8) {
            return Scalar::Unsigned(n);
        }
    }
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if numeric(digits) {
        if let Ok(n) = digits.parse() {
            return Scalar::Unsigned(n);
        }
    }
    if let Some(neg) = text.strip_prefix('-').filter(|s| numeric(s)) {
        if let Ok(n) = format!("-{neg}").parse() {
            return Scalar::Signed(n);
        }
    }
    let float_chars = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if float_chars && digits.bytes().any(|b| b.is_ascii_digit()) {
        if let Ok(f) = text.parse() {
            return Scalar::Float(f);
        }
    }
    Scalar::Text(text)
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
        Value::Scalar { text, plain } => match resolve(text, *plain) {
            Scalar::Null => Unexpected::Unit,
            Scalar::Bool(b) => Unexpected::Bool(b),
            Scalar::Unsigned(n) => Unexpected::Unsigned(n),
            Scalar::Signed(n) => Unexpected::Signed(n),
            Scalar::Float(f) => Unexpected::Float(f),
            Scalar::Text(s) => Unexpected::Str(s),
        },
    }
}

/// Deserializes the whole document.
pub(crate) fn from_root<T: de::DeserializeOwned>(root: &Node) -> Result<T, Error> {
    T::deserialize(De {
        node: root,
        path: Vec::new(),
    })
    .map_err(|e| e.locate(root.pos, &[]))
}

struct De<'a> {
    node: &'a Node,
    path: Vec<Seg>,
}

impl De<'_> {
    fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.node.value {
            Value::Scalar { text, plain } => Some(resolve(text, *plain)),
            _ => None,
        }
    }

    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(Scalar::Unsigned(n)) => visitor.visit_u64(n),
            Some(Scalar::Signed(n)) => visitor.visit_i64(n),
            Some(Scalar::Float(f)) => visitor.visit_f64(f),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                path: self.path,
            }),
            Value::Map(entries) => visitor.visit_map(MapAccess::new(entries, self.path)),
            Value::Scalar { text, plain } => match resolve(text, *plain) {
                Scalar::Null => visitor.visit_unit(),
                Scalar::Bool(b) => visitor.visit_bool(b),
                Scalar::Unsigned(n) => visitor.visit_u64(n),
                Scalar::Signed(n) => visitor.visit_i64(n),
                Scalar::Float(f) => visitor.visit_f64(f),
                Scalar::Text(s) => visitor.visit_str(s),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(Scalar::Bool(b)) => visitor.visit_bool(b),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.number(visitor)
    }

    /// Any non-null scalar reads as its text, so `name: 2024` is the string "2024".
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => visitor.visit_str(text),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(unexpected(self.node), &visitor))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                path: self.path,
            }),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapAccess::new(entries, self.path)),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    /// `value` for a unit variant, `{variant: ...}` for the others.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar { text, .. } if !self.node.is_null() => {
                visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(text.as_str()))
            }
            Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(EnumAccess {
                entry: &entries[0],
                path: self.path,
            }),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit_struct tuple tuple_struct
    }
}

struct SeqAccess<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: Vec<Seg>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let mut path = self.path.clone();
        path.push(Seg::Index(i));
        let de = De {
            node,
            path: path.clone(),
        };
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| e.locate(node.pos, &path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, Entry>,
    current: Option<&'a Entry>,
    path: Vec<Seg>,
}

impl<'a> MapAccess<'a> {
    fn new(entries: &'a [Entry], path: Vec<Seg>) -> Self {
        MapAccess {
            entries: entries.iter(),
            current: None,
            path,
        }
    }
}

/// Tier keys are periods, parsed by `Period`'s own `FromStr`; a misspelt
/// named period gets the same `did you mean` as a misspelt key.
const NAMED_TIERS: [&str; 3] = ["hourly", "daily", "weekly"];

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key = IntoDeserializer::<Error>::into_deserializer(entry.key.as_str());
        seed.deserialize(key).map(Some).map_err(|mut e| {
            let in_tiers = matches!(self.path.last(), Some(Seg::Key(k)) if k == "tiers");
            if in_tiers && e.at.is_none() {
                if let Some(best) = nearest(&entry.key, &NAMED_TIERS) {
                    e.message.push_str(&format!("; did you mean `{best}`?"));
                }
            }
            e.locate(entry.key_pos, &self.path)
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let entry = self
            .current
            .take()
            .expect("serde asks for a value after its key");
        let mut path = self.path.clone();
        path.push(Seg::Key(entry.key.clone()));
        let de = De {
            node: &entry.value,
            path: path.clone(),
        };
        seed.deserialize(de)
            .map_err(|e| e.locate(entry.value_pos(), &path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a> {
    entry: &'a Entry,
    path: Vec<Seg>,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = Error;
    type Variant = De<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, De<'a>), Error> {
        let key = IntoDeserializer::<Error>::into_deserializer(self.entry.key.as_str());
        let variant = seed
            .deserialize(key)
            .map_err(|e| e.locate(self.entry.key_pos, &self.path))?;
        let mut path = self.path;
        path.push(Seg::Key(self.entry.key.clone()));
        Ok((
            variant,
            De {
                node: &self.entry.value,
                path,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for De<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_only() {
        assert_eq!(nearest("hourlyy", &NAMED_TIERS), Some("hourly"));
        assert_eq!(nearest("huorly", &NAMED_TIERS), Some("hourly"));
        assert_eq!(
            nearest("immutable", &["immutable_for", "rpo"]),
            Some("immutable_for")
        );
        assert_eq!(nearest("foo", &["rpo", "rto"]), None);
        assert_eq!(nearest("monthly", &NAMED_TIERS), None);
        assert_eq!(nearest("c", &["a", "b"]), None);
        assert_eq!(nearest("rpp", &["rpo", "rto"]), Some("rpo"));
    }

    #[test]
    fn core_schema_scalars() {
        assert!(matches!(resolve("48", true), Scalar::Unsigned(48)));
        assert!(matches!(resolve("-3", true), Scalar::Signed(-3)));
        assert!(matches!(resolve("48", false), Scalar::Text("48")));
        assert!(matches!(resolve("yes", true), Scalar::Text("yes")));
        assert!(matches!(resolve("08:00", true), Scalar::Text("08:00")));
        assert!(matches!(resolve("1.5", true), Scalar::Float(_)));
        assert!(matches!(resolve("15m", true), Scalar::Text("15m")));
        assert!(matches!(resolve("~", true), Scalar::Null));
        assert!(matches!(resolve("TRUE", true), Scalar::Bool(true)));
    }
}
