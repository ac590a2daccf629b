//! The DynamoDB item codec every adapter of this crate uses: building
//! [`AttributeValue`]s and items, and reading typed attributes back.
//!
//! Readers come in two kinds:
//!
//! - [`Attrs`] for records the store owns: a missing or malformed attribute
//!   is [`StoreError::Corrupt`], whose text names the item kind and the
//!   attribute (e.g. `jobs table item attribute "status" is missing`);
//! - the plain functions ([`number`], [`number_text`], [`string_text`],
//!   [`take_binary`]) for callers that decide themselves what a missing or
//!   malformed attribute means (an error of their own, or a default).

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use crcr_core::ports::StoreError;

/// A DynamoDB item: attribute name → value.
pub(crate) type Item = HashMap<String, AttributeValue>;

// ---------------------------------------------------------------- building

/// An item (or key) of the given attributes. No error.
pub(crate) fn item<const N: usize>(attrs: [(&str, AttributeValue); N]) -> Item {
    attrs.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
}

/// A string attribute (`S`) of a `&str` or `String` (an owned one is not
/// copied). No error.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute (`N`) of an integer (or anything whose `to_string` is
/// a DynamoDB number). No error; for an `f64` use [`float`].
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A boolean attribute (`BOOL`). No error.
pub(crate) fn boolean(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

/// A binary attribute (`B`) holding a copy of `v`. No error.
pub(crate) fn binary(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

/// A finite `f64` as a number attribute (`N`): Rust's shortest decimal that
/// parses back to the same value (no exponent; DynamoDB keeps 38
/// significant digits). NaN or an infinity is [`StoreError::Corrupt`]
/// naming `what` (the item kind, e.g. `job`) and the attribute `name`.
pub(crate) fn float(what: &str, name: &str, v: f64) -> Result<AttributeValue, StoreError> {
    if v.is_finite() {
        Ok(n(v))
    } else {
        Err(StoreError::Corrupt(format!("{what} attribute {name:?}: {v} cannot be stored (not a finite number)")))
    }
}

// ---------------------------------------------------------------- reading, strict

/// Typed reads of one stored item. Every error is [`StoreError::Corrupt`]
/// with the text `<what> attribute "<name>" <why>`, `what` being the item
/// kind given to [`Attrs::new`] (e.g. `dispatch item`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attrs<'a> {
    item: &'a Item,
    what: &'static str,
}

impl<'a> Attrs<'a> {
    /// Reads `item`, an item of kind `what` (named in errors).
    pub(crate) fn new(item: &'a Item, what: &'static str) -> Self {
        Self { item, what }
    }

    /// [`StoreError::Corrupt`]: `<what> attribute "<name>" <why>`, for a
    /// caller's own check of a value (e.g. an unknown status).
    pub(crate) fn corrupt(&self, name: &str, why: &str) -> StoreError {
        StoreError::Corrupt(format!("{} attribute {name:?} {why}", self.what))
    }

    /// The string (`S`) attribute `name`; `None` when absent or `NULL`.
    /// Another type → `Corrupt` "is not a string".
    pub(crate) fn opt_s(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.corrupt(name, "is not a string")),
        }
    }

    /// The string (`S`) attribute `name`. Absent or `NULL` → `Corrupt` "is
    /// missing"; another type → `Corrupt` "is not a string".
    pub(crate) fn s(&self, name: &str) -> Result<String, StoreError> {
        self.opt_s(name)?.ok_or_else(|| self.corrupt(name, "is missing"))
    }

    /// The number (`N`) attribute `name` parsed as `T`; `None` when absent
    /// or `NULL`. Another type → `Corrupt` "is not a number"; a number `T`
    /// cannot hold → `Corrupt` "is out of range".
    pub(crate) fn opt_n<T: FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| self.corrupt(name, "is out of range")),
            Some(_) => Err(self.corrupt(name, "is not a number")),
        }
    }

    /// The number (`N`) attribute `name` parsed as `T`. Absent or `NULL` →
    /// `Corrupt` "is missing"; otherwise the errors of [`Attrs::opt_n`].
    pub(crate) fn n<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.opt_n(name)?.ok_or_else(|| self.corrupt(name, "is missing"))
    }

    /// The boolean (`BOOL`) attribute `name`; `false` when absent. Another
    /// type (`NULL` included) → `Corrupt` "is not a boolean".
    pub(crate) fn flag(&self, name: &str) -> Result<bool, StoreError> {
        match self.item.get(name) {
            None => Ok(false),
            Some(AttributeValue::Bool(b)) => Ok(*b),
            Some(_) => Err(self.corrupt(name, "is not a boolean")),
        }
    }
}

// ---------------------------------------------------------------- reading, lenient

/// The text of the number (`N`) attribute `name`; `None` when absent or of
/// another type. No error: the caller decides.
pub(crate) fn number_text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => Some(v),
        _ => None,
    }
}

/// The number (`N`) attribute `name` parsed as `T`; `None` when absent, of
/// another type or not a `T`. No error: the caller decides.
pub(crate) fn number<T: FromStr>(item: &Item, name: &str) -> Option<T> {
    number_text(item, name).and_then(|v| v.parse().ok())
}

/// The string (`S`) attribute `name`; `None` when absent or of another
/// type. No error: the caller decides.
pub(crate) fn string_text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

/// An attribute of another type than the one asked for (see [`take_binary`]).
#[derive(Debug)]
pub(crate) struct WrongType;

/// Removes the binary (`B`) attribute `name` from `item` and returns its
/// bytes (no copy); `Ok(None)` when absent. Another type → [`WrongType`]
/// (the attribute is removed all the same); the caller words the error.
pub(crate) fn take_binary(item: &mut Item, name: &str) -> Result<Option<Vec<u8>>, WrongType> {
    match item.remove(name) {
        None => Ok(None),
        Some(AttributeValue::B(b)) => Ok(Some(b.into_inner())),
        Some(_) => Err(WrongType),
    }
}

// ---------------------------------------------------------------- errors

/// [`StoreError::Unavailable`] for a failed DynamoDB request: `DynamoDB
/// <what>: <the SDK error with its sources>`, the SDK error kept as its source.
pub(crate) fn unavailable<E: std::error::Error + Send + Sync + 'static>(what: &str, e: E) -> StoreError {
    StoreError::Unavailable { what: format!("DynamoDB {what}: {}", DisplayErrorContext(&e)), source: Some(Box::new(e)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_through_their_number_text() {
        for v in [0.0, 0.1, 1.0 / 3.0, 12_345.678, 86_400.5, 1e-7, 123_456_789.123_456_78] {
            let AttributeValue::N(text) = float("job", "x", v).unwrap() else { panic!("not N") };
            assert_eq!(text.parse::<f64>().unwrap(), v, "{text}");
            assert!(!text.contains('e'), "{text}");
        }
        assert!(float("job", "x", f64::NAN).is_err());
        assert!(float("job", "x", f64::INFINITY).is_err());
    }

    #[test]
    fn strict_reads_name_the_item_kind_and_attribute() {
        let it = item([
            ("a", s("x")),
            ("b", n(7)),
            ("big", n(300)),
            ("c", boolean(true)),
            ("z", AttributeValue::Null(true)),
        ]);
        let a = Attrs::new(&it, "test item");
        assert_eq!(a.s("a").unwrap(), "x");
        assert_eq!(a.n::<u32>("b").unwrap(), 7);
        assert_eq!(a.opt_s("z").unwrap(), None);
        assert_eq!(a.opt_n::<i64>("missing").unwrap(), None);
        assert!(a.flag("c").unwrap());
        assert!(!a.flag("missing").unwrap());
        let msg = |e: StoreError| match e {
            StoreError::Corrupt(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(msg(a.s("missing").unwrap_err()), r#"test item attribute "missing" is missing"#);
        assert_eq!(msg(a.s("b").unwrap_err()), r#"test item attribute "b" is not a string"#);
        assert_eq!(msg(a.n::<i64>("a").unwrap_err()), r#"test item attribute "a" is not a number"#);
        assert_eq!(msg(a.n::<u8>("big").unwrap_err()), r#"test item attribute "big" is out of range"#);
        assert_eq!(msg(a.flag("z").unwrap_err()), r#"test item attribute "z" is not a boolean"#);
    }

    #[test]
    fn lenient_reads_leave_the_decision_to_the_caller() {
        let mut it = item([("n", n(3)), ("t", s("x")), ("b", binary(b"hi")), ("bad", n(1))]);
        assert_eq!(number::<usize>(&it, "n"), Some(3));
        assert_eq!(number::<usize>(&it, "t"), None);
        assert_eq!(number_text(&it, "n"), Some("3"));
        assert_eq!(string_text(&it, "t"), Some("x"));
        assert_eq!(string_text(&it, "n"), None);
        assert_eq!(take_binary(&mut it, "b").unwrap(), Some(b"hi".to_vec()));
        assert_eq!(take_binary(&mut it, "b").unwrap(), None);
        assert!(take_binary(&mut it, "bad").is_err());
    }
}
