//! JSON text to a `serde_json::Value`, refusing an object that names the same key twice.
//!
//! serde_json keeps the last of two equal keys without a word, so `"master_slave_switch": true,
//! …, "master_slave_switch": false` silently kept the master. The visitor below builds the same
//! `Value` serde_json's own visitor builds, with one difference: a map entry goes in through
//! `Map::entry`, whose occupied case is the duplicate — no extra lookup, no copy of the key on a
//! valid document. The path of a duplicate is assembled only on the error's way out, each level
//! adding its own key or index.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why the text is not a configuration tree.
#[derive(Debug)]
pub enum StrictJsonError {
    /// Not JSON at all (serde_json's message, with line and column).
    Syntax(serde_json::Error),
    /// An object names `key` twice; `path` leads to that object (`domains[2].master`, or empty
    /// for the document itself).
    DuplicateKey { path: String, key: String },
}

enum Segment {
    Key(String),
    Index(usize),
}

struct Duplicate {
    key: String,
    /// Innermost first: pushed while the error travels outwards.
    path: Vec<Segment>,
}

/// Parses `bytes` into a `Value`, as `serde_json::from_slice` does, unless an object repeats a key.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let found = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result = Seed { found: &found }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (result, found.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(Duplicate { key, path })) => Err(StrictJsonError::DuplicateKey {
            path: path_text(&path),
            key,
        }),
        (Err(e), None) => Err(StrictJsonError::Syntax(e)),
    }
}

fn path_text(innermost_first: &[Segment]) -> String {
    let mut out = String::new();
    for segment in innermost_first.iter().rev() {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(index) => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    found: &'a RefCell<Option<Duplicate>>,
}

impl Seed<'_> {
    /// An error came out of a child: if it is a duplicate, add this level to its path.
    fn through(&self, segment: Segment) {
        if let Some(found) = self.found.borrow_mut().as_mut() {
            found.path.push(segment);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(value)) => items.push(value),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.through(Segment::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = match access.next_value_seed(self) {
                Ok(value) => value,
                Err(e) => {
                    self.through(Segment::Key(key));
                    return Err(e);
                }
            };
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key().clone();
                    *self.found.borrow_mut() = Some(Duplicate {
                        key: key.clone(),
                        path: Vec::new(),
                    });
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(text: &str) -> (String, String) {
        match from_slice(text.as_bytes()) {
            Err(StrictJsonError::DuplicateKey { path, key }) => (path, key),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn the_same_tree_as_serde_json() {
        let text = r#"{"a":[1,-2,3.5,1e400,"x",null,true,{"b":{}}],"c":"\u00e9","d":18446744073709551615}"#;
        let strict = from_slice(text.as_bytes()).ok();
        let plain: Option<Value> = serde_json::from_str(text).ok();
        assert_eq!(strict, plain);
        assert!(strict.is_none(), "1e400 is out of range for both");
        let text =
            r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":"\u00e9","d":18446744073709551615}"#;
        assert_eq!(
            from_slice(text.as_bytes()).ok(),
            serde_json::from_str::<Value>(text).ok()
        );
    }

    #[test]
    fn duplicates_are_found_with_their_path() {
        assert_eq!(duplicate(r#"{"a":1,"a":2}"#), ("".into(), "a".into()));
        assert_eq!(
            duplicate(r#"{"domains":[{"x":1},{"domain":"d","m":{"k":[0,{"s":true,"s":false}]}}]}"#),
            ("domains[1].m.k[1]".into(), "s".into())
        );
        // Equal after JSON unescaping is equal.
        assert_eq!(duplicate(r#"{"a":1,"\u0061":2}"#), ("".into(), "a".into()));
        // The same key in different objects is fine.
        assert!(from_slice(br#"{"a":{"a":1},"b":{"a":1}}"#).is_ok());
    }

    #[test]
    fn syntax_errors_stay_serde_jsons() {
        match from_slice(br#"{"a":1,}"#) {
            Err(StrictJsonError::Syntax(e)) => assert!(e.to_string().contains("line 1")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_slice(br#"{"a":1} x"#),
            Err(StrictJsonError::Syntax(_))
        ));
    }
}
